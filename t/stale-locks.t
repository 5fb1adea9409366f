#!perl
# Stale lock words and "being mutated" markers left in a CLOSED file, as a
# reboot leaves them on a persistent disk (issue 5 item 4, DESIGN 3-4): the
# first opener, the sole user of the file, re-initialises every lock word,
# so it never blocks; a page whose marker is still set is validated (and
# repaired if needed) the first time it is locked. A second opener while the
# file is in use must NOT reset the lock words.
#
# A "reboot" is simulated by SIGKILLing a process that holds a page lock,
# then putting its (dead) thread id back into the lock word in place of the
# owner-died mark the kernel wrote at its exit: after a crash of the whole
# machine nobody writes that mark, and the word names a dead owner forever
# (a plain pthread_mutex_lock on it would block for good).
#
# A repaired page is checked for soundness, not only for the repair count
# and warning: every entry written before the crash reads back (all of
# them, or all but the one item the test garbled), get_keys agrees with
# get, new sets on the page work, and a full validation (test_file) of the
# file afterwards finds nothing left to repair. A repair that only counts,
# warns and resets the lock fails this, and so does one that empties the
# page.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use Storable ();

my %GEOM = (num_pages => 4, page_size => 8192);
my $FUTEX_OWNER_DIED = 0x40000000;

sub value_for { my ($k, $g) = @_; "$k=$g=" . unpack('%32C*', "$k$g") }

# File offsets of page $page's lock entry and of the page (see FMTest).
sub entry_off { FMTest::lock_entry_off($GEOM{page_size}, $_[0]) }
sub page_off { FMTest::page_off($GEOM{page_size}, $_[0]) }

sub rw_u32 {
    my ($file, $off, $new) = @_;
    open my $fh, '+<:raw', $file or die "$file: $!";
    sysseek($fh, $off, 0) or die;
    sysread($fh, my $b, 4) == 4 or die "short read";
    my $old = unpack 'L', $b;
    if (defined $new) {
        sysseek($fh, $off, 0) or die;
        syswrite($fh, pack('L', $new)) == 4 or die "short write";
    }
    close $fh;
    return $old;
}

sub wait_for_byte {
    my ($fh, $timeout) = @_;
    return undef unless IO::Select->new($fh)->can_read($timeout);
    my $n = sysread($fh, my $b, 1);
    return $n ? $b : undef;
}

sub new_cache {
    my ($file, %o) = @_;
    return Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '',
                                unlink_on_exit => 0, %o);
}

# What a writer that dies part-way through changing page $page leaves in
# its lock entry: the "being mutated" marker (offset 56) set and the
# change counter (offset 60) odd.
sub mark_changing {
    my ($file, $page) = @_;
    my $entry = entry_off($page);
    rw_u32($file, $entry + 56, 1);
    rw_u32($file, $entry + 60, rw_u32($file, $entry + 60) | 1);
}

# Key => offset in the file of every item page $page of $file holds
# (layout: see FMTest's page_off and slot_pos).
sub item_offsets {
    my ($file, $page) = @_;
    my $base = page_off($page);
    open my $fh, '<:raw', $file or die "$file: $!";
    sysseek($fh, $base, 0) or die;
    sysread($fh, my $p, $GEOM{page_size}) == $GEOM{page_size} or die "short read";
    my %at;
    for my $i (0 .. unpack('L', substr($p, 4, 4)) - 1) {
        my $o = unpack 'L', substr($p, FMTest::slot_pos($i), 4);
        next if $o <= 1;
        my $kl = unpack 'L', substr($p, $o + 16, 4);
        $at{ substr($p, $o + 24, $kl) } = $base + $o;
    }
    return \%at;
}

# Builds a closed file with 60 keys and one page whose lock word names a
# dead owner; returns (page, the lock word the kernel left, keys lost to
# the damage). $mark: also set its marker. $damage 1: the page's free slot
# count off by one; 2: one item's key length running past the page.
sub stale_file {
    my ($file, $mark, $damage) = @_;
    my ($page, @keys);
    {
        my $c = new_cache($file);
        $c->set("k$_", value_for("k$_", 0)) for 1 .. 60;
        ($page) = Cache::FastMmap::fc_hash($c->{Cache}, 'k1');
    }
    pipe(my $r, my $w) or die;
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        my $c = new_cache($file);
        $c->get_and_set('k1', sub { syswrite($w, 'L'); sleep 1 while 1; 'never' });
        return 9;
    });
    close $w;
    my $got = wait_for_byte($r, 30);
    kill 'KILL', $pid;
    my $st = FMTest::wait_children(30, $pid);
    die "victim did not take the lock" unless ($got // '') eq 'L';
    die "victim not killed" unless FMTest::describe_status($st->{$pid}) eq 'signal 9';
    # every process has now closed the file. Make the lock word look like
    # it does after a reboot: locked by a dead thread (glibc: the futex word
    # at offset 0 and the owner at offset 8 hold the owner's thread id).
    my $entry = entry_off($page);
    my $word = rw_u32($file, $entry, $pid);
    rw_u32($file, $entry + 8, $pid);
    mark_changing($file, $page) if $mark;
    my @gone;
    if ($damage == 1) {
        # a torn update: the free slot count off by one (only a full
        # validation of the page notices)
        my $o = page_off($page) + 8;
        rw_u32($file, $o, rw_u32($file, $o) - 1);
    }
    elsif ($damage == 2) {
        # a torn item: that entry is lost, all the others must survive
        my $at = item_offsets($file, $page);
        my ($k) = grep { $_ ne 'k1' } sort keys %$at;
        rw_u32($file, $at->{$k} + 16, 0x7fff0000);
        @gone = ($k);
    }
    return ($page, $word, @gone);
}

# Opens $file with test_file => 1 (every page fully validated, the bad ones
# repaired) in a bounded child: the problems it reports (pages repaired,
# warnings, or how the child ended).
my $vreport = FMTest::tmpdir() . '/validate';
sub validation_problems {
    my ($file) = @_;
    unlink $vreport;
    my $st = FMTest::run_in_child(20, sub {
        my @w;
        local $SIG{__WARN__} = sub { push @w, $_[0] };
        my $c = new_cache($file, test_file => 1);
        Storable::nstore({ repaired => $c->repaired_pages, warnings => \@w }, $vreport);
        return 0;
    });
    my $r = -e $vreport ? Storable::retrieve($vreport) : undef;
    return ("validation child: " . FMTest::describe_status($st)) unless $r;
    return (($r->{repaired} ? ("full validation repaired $r->{repaired} page(s)") : ()),
            map { "full validation warned: $_" } @{ $r->{warnings} });
}

my $report = FMTest::tmpdir() . '/report';
# Opens $file in a bounded child, as the first user after the crash, and
# reports: the keys k1..k60 not reading back their value (or, for the
# @gone ones, reading anything), the warnings and repairs, k1 after a
# get_and_set, and the problems of the stale page afterwards (get_keys
# against get, new sets on it).
sub fresh_open {
    my ($file, $page, @gone) = @_;
    my %gone = map { $_ => 1 } @gone;
    unlink $report;
    my $st = FMTest::run_in_child(20, sub {
        my @w;
        local $SIG{__WARN__} = sub { push @w, $_[0] };
        my $c = new_cache($file);
        my @bad = grep {
            my $v = eval { $c->get($_) };
            $@ || ($gone{$_} ? defined $v : ($v // '') ne value_for($_, 0));
        } map { "k$_" } 1 .. 60;
        my $n = $c->get_and_set('k1', sub { 'again' });
        # and again, now that the page has surely been locked (and checked)
        push @bad, map { "$_ after a lock" } grep {
            my $v = eval { $c->get($_) };
            $@ || ($gone{$_} ? defined $v : ($v // '') ne value_for($_, 0));
        } map { "k$_" } 2 .. 60;
        my @p;
        my %listed = map { $_->{key} => $_->{value} } eval { $c->get_keys(2) };
        push @p, "get_keys died: $@" if $@;
        push @p, map { "get_keys lists $_ with a value get does not return" }
                 grep { ($c->get($_) // "\0") ne ($listed{$_} // "\1") } sort keys %listed;
        push @p, map { "get_keys misses $_" }
                 grep { !$gone{$_} && !exists $listed{$_} } map { "k$_" } 1 .. 60;
        if (defined $page) {
            my $made = 0;
            for (my $i = 0; $made < 10; $i++) {
                next unless (Cache::FastMmap::fc_hash($c->{Cache}, "new$i"))[0] == $page;
                $made++;
                my $ok = eval { $c->set("new$i", value_for("new$i", 1)) };
                push @p, "a new set of new$i on the page did not read back"
                    unless $ok && ($c->get("new$i") // '') eq value_for("new$i", 1);
            }
        }
        Storable::nstore({ bad => \@bad, warnings => \@w, repaired => $c->repaired_pages,
                           k1 => $c->get('k1'), page => \@p }, $report);
        return 0;
    });
    return ($st, -e $report ? Storable::retrieve($report) : undef);
}

for my $case (['stale lock word', 0, 0], ['stale lock word + marker', 1, 0],
              ['stale lock word + marker + torn page', 1, 1],
              ['stale lock word + marker + torn item', 1, 2]) {
    my ($name, $mark, $damage) = @$case;
    my $file = FMTest::share_file('stale');
    my ($page, $word, @gone) = stale_file($file, $mark, $damage);
    SKIP: {
        skip 'the fcntl backend has no lock word to mark (the lock is in the kernel)', 1
            unless Cache::FastMmap::_lock_backend() eq 'robust-mutex';
        ok($word & $FUTEX_OWNER_DIED, "$name: the kernel had marked the lock owner-dead");
    }
    my $ino = (stat $file)[1];
    my ($st, $r) = fresh_open($file, $page, @gone);
    is(FMTest::describe_status($st), 'exit 0', "$name: a fresh opener does not block (alarm-bounded)")
        or next;
    is((stat $file)[1], $ino, "$name: same file (not replaced)");
    is($r->{k1}, 'again', "$name: the stale page is usable");
    if ($damage) {
        is($r->{repaired}, 1, "$name: the marked page was validated and repaired");
        is(scalar @{ $r->{warnings} }, 1, "$name: one warning");
        like($r->{warnings}[0] // '', qr/^page $page of \Q$file\E reinitialised: \S/,
             "$name: documented warning");
    }
    else {
        is($r->{repaired}, 0, "$name: nothing repaired");
        is_deeply($r->{warnings}, [], "$name: no warnings");
    }
    is_deeply($r->{bad}, [], "$name: every value intact" . (@gone ? " but the garbled item's (@gone), gone" : ''));
    is_deeply($r->{page}, [], "$name: get_keys agrees with get, new sets on the page work");
    is_deeply([validation_problems($file)], [], "$name: a full validation afterwards finds the file sound");
    is(rw_u32($file, entry_off($page) + 56), 0, "$name: marker clear afterwards");
    is(rw_u32($file, entry_off($page) + 60) % 2, 0, "$name: change counter even afterwards");
}

# With another user present (a shared liveness lock held by someone else, as
# a live process would hold it) nothing may be reset at open: the stale word
# stays. The locker then finds it abandoned (its recorded owner's opener slot
# is not held by anyone, issue 10) and takes it over after a bounded wait,
# instead of blocking forever.
SKIP: {
    skip 'OFD locks are Linux-only', 3 unless $^O eq 'linux';
    my $file = FMTest::share_file('control');
    my ($page) = stale_file($file, 0, 0);
    my $entry = entry_off($page);
    my $stale = rw_u32($file, $entry);
    open my $fh, '<', $file or die "$file: $!";
    my $F_OFD_SETLK = 37;
    my $fl = pack('s s x4 q q i x4', 0 ,0, 0, 1, 0);   # F_RDLCK on byte 0
    skip "cannot take an OFD lock: $!", 3 unless fcntl($fh, $F_OFD_SETLK, $fl);
    unlink $report;
    # a set must take the page lock (a get may read without it)
    my $st = FMTest::run_in_child(30, sub {
        my $c = new_cache($file);
        my $word = rw_u32($file, $entry);
        $c->set('k1', 'x');
        Storable::nstore({ word => $word, k1 => $c->get('k1') }, $report);
        0;
    });
    my $r = -e $report ? Storable::retrieve($report) : {};
    is($r->{word}, $stale, 'another user present: the stale lock word is not reset at open');
    is(FMTest::describe_status($st), 'exit 0',
       '... a set takes the abandoned lock over (alarm-bounded, no hang)');
    is($r->{k1}, 'x', '... and the value is stored');
    close $fh;
}

# The marker alone (lock words fine): validated on first lock, not at open
# (without test_file) -- and a valid page is left alone.
{
    my $file = FMTest::share_file('marker');
    my $page;
    {
        my $c = new_cache($file);
        $c->set("k$_", value_for("k$_", 0)) for 1 .. 60;
        ($page) = Cache::FastMmap::fc_hash($c->{Cache}, 'k1');
    }
    my $o = page_off($page) + 8;
    rw_u32($file, $o, rw_u32($file, $o) - 1);   # damage only validation sees
    my $ctl = FMTest::share_file('ctl');        # the same damage, no marker
    {
        my $c = new_cache($ctl);
        $c->set("k$_", value_for("k$_", 0)) for 1 .. 60;
    }
    my $o2 = page_off($page) + 8;
    rw_u32($ctl, $o2, rw_u32($ctl, $o2) - 1);
    mark_changing($file, $page);
    my ($st, $r) = fresh_open($file, $page);
    is(FMTest::describe_status($st), 'exit 0', 'marker only: fresh opener fine');
    is($r->{repaired}, 1, 'marker only: the marked page got a full validation and was repaired');
    like($r->{warnings}[0] // '', qr/^page $page of \Q$file\E reinitialised: .*half-modified/,
         'marker only: the warning says the page was left half-modified');
    is_deeply($r->{bad}, [], 'marker only: every value intact');
    is_deeply($r->{page}, [], 'marker only: get_keys agrees with get, new sets on the page work');
    is_deeply([validation_problems($file)], [], 'marker only: a full validation afterwards finds the file sound');
}

# While another process has the file open, a new opener must not reset the
# lock words: a lock held by a live process still excludes it.
{
    my $file = FMTest::share_file('live');
    my $c = new_cache($file);
    $c->set('n', 10);
    undef $c;
    pipe(my $r, my $w) or die;
    pipe(my $go_r, my $go_w) or die;
    my $holder = FMTest::fork_child(60, sub {
        close $r; close $go_w;
        my $h = new_cache($file);
        $h->get_and_set('n', sub {
            syswrite($w, 'L');
            sysread($go_r, my $x, 1);   # until the parent says go (or EOF)
            $_[1] + 1;
        });
        return 0;
    });
    close $w; close $go_r;
    is(wait_for_byte($r, 30), 'L', 'live holder has the page lock');
    pipe(my $dr, my $dw) or die;
    my $second = FMTest::fork_child(60, sub {
        close $dr;
        my $s = new_cache($file);      # not the sole user: must not re-init
        my $v = $s->get_and_set('n', sub { $_[1] + 1 });
        syswrite($dw, "$v\n");
        return 0;
    });
    close $dw;
    # the second opener's increment must wait for the holder's
    my $early = IO::Select->new($dr)->can_read(1) ? 'finished while the lock was held' : 'waiting';
    syswrite($go_w, 'g');
    close $go_w;
    my $st = FMTest::wait_children(40, $holder, $second);
    is(FMTest::describe_status($st->{$_}), 'exit 0', "process $_ finished") for $holder, $second;
    my $line = <$dr>;
    is($early, 'waiting', 'second opener was excluded by the live lock');
    chomp($line) if defined $line;
    is($line, 12, 'no lost update: the lock words were not reset under a live user');
    is(new_cache($file)->get('n'), 12, 'final value 12');
}

done_testing;
