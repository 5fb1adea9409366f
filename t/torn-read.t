#!perl
# Lock-free reads under fire (issue 15). get and exists first read a page
# without its lock and keep the answer only if the page's change counter (a
# sequence lock: odd while a writer changes the page) is the same even value
# before and after. This stress makes that protocol matter: one 8 KB page
# and two keys whose values fill half of it, so that about every second set
# compacts the page and moves both values while readers copy them.
#
#  - A writer process overwrites the keys with self-checking values (key,
#    writer and generation at both ends, a generation-dependent length and
#    filler): any mix of two values, or a value of another key, is caught.
#  - A reader process gets (and now and then exists) those keys in a loop
#    and counts torn or foreign values, misses (no key is ever evicted or
#    deleted) and values older than one it already saw from the same writer.
#  - Meanwhile the parent, several times, pauses the reader, takes the page
#    lock itself (fc_lock) and has the reader do a burst of gets: those can
#    only complete without that lock, so the reads of this test are proven
#    lock-free (the parent waits for them before it unlocks).
#  - Then the parent stops the reader (SIGSTOP) 600 times wherever it
#    happens to be, often inside get, changes the page, and resumes it; and
#    as often stops the writer, sometimes half-way through a change, while
#    the reader reads on: the moments the protocol is for happen on demand
#    instead of only when the scheduler is unlucky.
#  - The reader does at least $READ_QUOTA reads and the writer $WRITE_QUOTA
#    sets, all while the other one runs: no timing decides whether the run
#    read anything. Everything is bounded: children have alarms and are
#    reaped, waits have deadlines.
#
# Each of these engine bugs makes this test fail (measured when it was
# written, several runs each): the reader skipping the counter re-check, the
# XS using a value whose re-check failed, the writer not making the counter
# odd, the reader accepting an odd counter.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use Time::HiRes ();
use POSIX ();
use Config ();
use Fcntl ();

# Every process uses this clock: entries' last-access times are then always
# "now", so a hit needs no LRU update and can be read without the lock.
my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

my $READERS = 1;             # one reader and one writer: each has a core
my $WRITERS = 1;
my $READ_QUOTA = 500_000;   # reads per reader, at least
my $WRITE_QUOTA = 100_000;  # sets per writer, at least
my $STOPS = 600;            # times a reader is stopped while the page changes
my $HOLDS = 4;              # rounds of "parent holds the lock, readers read"
my $BURST = 200;            # gets per reader per round
my $DEADLINE = 120;         # seconds: bound on the whole stress

my %GEOM = (num_pages => 1, page_size => 8192);
my $LOCK0 = FMTest::lock_entry_off($GEOM{page_size}, 0);   # the one page's lock entry
my $file = FMTest::share_file('torn');
# Two keys of 1200..2200 bytes: at most 2 x 2228 bytes live, under the 60%
# of the item area (4682 bytes) an expunge keeps, so nothing is ever
# evicted (a miss is a bug), while every second set or so must compact the
# page, moving both values.
my ($MIN_LEN, $MAX_LEN) = (1200, 2200);
my @KEYS = ('key1', 'key2');

sub open_cache {
    return Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '',
                                unlink_on_exit => 0);
}

sub value_for {
    my ($key, $w, $gen) = @_;
    my $tag = "$key/$w/$gen";
    my $len = $MIN_LEN + ($gen * 211 + $w * 97) % ($MAX_LEN - $MIN_LEN + 1);
    my $fill = chr(48 + ($gen * 7 + $w) % 75);
    return "<$tag<" . ($fill x ($len - 2 * length($tag) - 4)) . ">$tag>";
}

# (writer, generation) of a good value of $key, or () for anything else.
sub parse_value {
    my ($key, $v) = @_;
    return () unless defined $v && $v =~ m{\A<([^/<]*)/(\d+)/(\d+)<};
    my ($k, $w, $gen) = ($1, $2, $3);
    return $k eq $key && $v eq value_for($key, $w, $gen) ? ($w, $gen) : ();
}
sub good_value { my @wg = parse_value(@_); return @wg ? 1 : 0 }

# One descriptor, kept open: with the fcntl lock backend, closing a descriptor
# of the share file would drop this process's page lock.
my $FH;
sub u32_at {
    my ($off) = @_;
    my $fh = $FH ||= do { open my $f, '<:raw', $file or die "$file: $!"; $f };
    sysseek($fh, $off, 0) or die "seek: $!";
    sysread($fh, my $b, 4) == 4 or die "short read";
    return unpack 'L', $b;
}

my $FCNTL = Cache::FastMmap::_lock_backend() eq 'fcntl';

# The pid holding page 0's lock (0: nobody). glibc keeps the owner's thread id
# in the mutex's first word; the fcntl backend's lock is in the kernel, which
# F_GETLK asks (in Linux's struct flock of 64-bit systems: the holder record in
# the entry is written just after the lock is had, so it could lag behind).
sub page0_holder {
    return u32_at($LOCK0) & 0x3fffffff unless $FCNTL;
    u32_at($LOCK0);    # opens $FH
    my $fl = pack('s s x4 q q i x4', Fcntl::F_WRLCK(), 0, $LOCK0, 1, 0);
    fcntl($FH, Fcntl::F_GETLK(), $fl) or die "F_GETLK: $!";
    my ($type, $pid) = (unpack('s s x4 q q i x4', $fl))[0, 4];
    return $type == Fcntl::F_UNLCK() ? 0 : $pid;
}

# ------------------------------------------------------------ the children
my $parent = open_cache();
$parent->set($_, value_for($_, 0, 0)) for @KEYS;
is_deeply([map { good_value($_, $parent->get($_)) } @KEYS], [(1) x @KEYS], 'values check themselves');
ok(!good_value($KEYS[0], value_for($KEYS[1], 0, 0)) && !good_value($KEYS[0], substr(value_for($KEYS[0], 0, 0), 1))
   && !good_value($KEYS[0], value_for($KEYS[0], 0, 0) . 'x'), '... and foreign or damaged values fail the check');

my $bar = FMTest::barrier();
my (@kids, %kid);
sub spawn {
    my ($role, $id, $code) = @_;
    pipe(my $cmd_r, my $cmd_w) or die "pipe: $!";
    pipe(my $up_r, my $up_w) or die "pipe: $!";
    my $pid = FMTest::fork_child($DEADLINE + 30, sub {
        close $cmd_w;
        close $up_r;
        for my $o (values %kid) { close $o->{cmd}; close $o->{up} }
        my $c = open_cache();
        $bar->wait;
        return $code->($c, $cmd_r, $up_w, $id);
    });
    close $cmd_r;
    close $up_w;
    $kid{$pid} = { pid => $pid, role => $role, id => $id, cmd => $cmd_w, up => $up_r, buf => '' };
    push @kids, $pid;
}

sub say_up { my ($fh, $line) = @_; syswrite($fh, "$line\n") }

# A command from the parent, if one is waiting (non-blocking).
sub poll_cmd {
    my ($fh) = @_;
    my $rin = '';
    vec($rin, fileno($fh), 1) = 1;
    return undef unless select(my $rout = $rin, undef, undef, 0) > 0;
    my $n = sysread($fh, my $b, 1);
    return $n ? $b : 'S';    # EOF: the parent is gone, stop
}

sub writer {
    my ($c, $cmd, $up, $w) = @_;
    my ($sets, $refused) = (0, 0);
    for (my $gen = 1;; $gen++) {
        my $k = $KEYS[($gen + $w) % @KEYS];
        $c->set($k, value_for($k, $w, $gen)) or $refused++;
        $sets++;
        say_up($up, 'Q') if $sets == $WRITE_QUOTA;
        next if $gen % 32;
        my $m = poll_cmd($cmd) // next;
        last if $m eq 'S';
    }
    say_up($up, "R sets=$sets refused=$refused");
    return 0;
}

sub reader {
    my ($c, $cmd, $up) = @_;
    my %n = map { $_ => 0 } qw(reads exists torn missing backwards);
    my (%last, @examples);
    my $bad = sub {
        my ($what, $k, $v) = @_;
        $n{$what}++;
        push @examples, "#$n{reads} $what $k: " . (defined $v ? substr($v, 0, 40) . '...' . length($v) : 'undef')
            if @examples < 5;
    };
    my %seen;    # the last good value read of each key
    my $check = sub {
        my ($k, $v) = @_;
        # the same value as last time (the common case) needs no parsing
        return if defined $v && defined $seen{$k} && $v eq $seen{$k};
        my ($w, $gen) = parse_value($k, $v);
        return defined $v ? $bad->('torn', $k, $v) : $bad->('missing', $k, $v)
            unless defined $w;
        # the same writer's values of a key only move forwards
        $bad->('backwards', $k, $v) if $gen < ($last{"$k/$w"} // 0);
        $last{"$k/$w"} = $gen;
        $seen{$k} = $v;
    };
    for (my $i = 0;; $i++) {
        my $k = $KEYS[$i % @KEYS];
        $check->($k, $c->get($k));
        $n{reads}++;
        if ($i % 8 == 0) {
            $n{exists}++;
            $bad->('missing', "exists($k)", undef) unless $c->exists($k);
        }
        say_up($up, 'Q') if $n{reads} == $READ_QUOTA;
        next if $i % 64;
        my $m = poll_cmd($cmd) // next;
        last if $m eq 'S';
        # 'P': pause (between two gets) until the parent holds the page lock,
        # then ('H') do gets that cannot complete if they need that lock
        say_up($up, 'A');
        sysread($cmd, $m, 1) or last;
        last if $m ne 'H';
        my $ok = 0;
        for my $j (1 .. $BURST) {
            my $bk = $KEYS[$j % @KEYS];
            $ok++ if good_value($bk, $c->get($bk)) && $c->exists($bk);
        }
        say_up($up, "D $ok");
    }
    my $ex = join ' | ', @examples;
    $ex =~ s/[^\x20-\x7e]/?/g;
    say_up($up, 'R ' . join(' ', map { "$_=$n{$_}" } sort keys %n) . " examples=$ex");
    return 0;
}

spawn('reader', $_, \&reader) for 1 .. $READERS;
spawn('writer', $_, \&writer) for 1 .. $WRITERS;
my @readers = grep { $kid{$_}{role} eq 'reader' } @kids;

# Next line from a child (bounded); 'Q' lines are recorded on the way.
# With $quota, returns '' as soon as the child has reported its quota.
sub next_line {
    my ($k, $until, $quota) = @_;
    while (1) {
        while ($k->{buf} =~ s/\A([^\n]*)\n//) {
            my $l = $1;
            if ($l eq 'Q') { $k->{quota} = 1; next }
            return $l;
        }
        return '' if $quota && $k->{quota};
        my $left = $until - Time::HiRes::time();
        return undef if $left <= 0 || !IO::Select->new($k->{up})->can_read($left);
        my $n = sysread($k->{up}, $k->{buf}, 4096, length $k->{buf});
        return undef unless $n;
    }
}

my $end = Time::HiRes::time() + $DEADLINE;
$bar->release;

# ------------------------------------- reads done while the parent holds the lock
my $h = $parent->{Cache};
my (@hold_problems, $held_reads);
for my $round (1 .. $HOLDS) {
    Time::HiRes::sleep(0.05);
    # the readers first stop between two gets: one of them may be queued
    # for the lock right now (its lock-free attempt met a change under way)
    syswrite($kid{$_}{cmd}, 'P') for @readers;
    for my $pid (@readers) {
        my $l = next_line($kid{$pid}, $end) // 'nothing';
        push @hold_problems, "round $round: reader $pid answered '$l' to pause" if $l ne 'A';
    }
    Cache::FastMmap::fc_lock($h, 0);
    # glibc keeps the owner's thread id in the mutex's first word (the
    # fcntl backend records the holder's pid at offset 52): the parent, not
    # some other process, holds the lock now
    if (Cache::FastMmap::_lock_backend() eq 'fcntl') {
        my $owner = u32_at($LOCK0 + 52);
        push @hold_problems, "round $round: holder record names $owner, not $$" if $owner != $$;
    } elsif ($^O eq 'linux') {
        my $owner = u32_at($LOCK0) & 0x3fffffff;
        push @hold_problems, "round $round: lock word names $owner, not $$" if $owner != $$;
    }
    my $before = u32_at($LOCK0 + 60);
    syswrite($kid{$_}{cmd}, 'H') for @readers;
    for my $pid (@readers) {
        # a reader whose get took the lock would wait for us forever: its
        # answer never comes and the bound below ends the wait
        my $l = next_line($kid{$pid}, Time::HiRes::time() + 30) // 'nothing';
        if ($l =~ /\AD (\d+)\z/) {
            $held_reads += $1;
            push @hold_problems, "round $round: reader $pid: only $1 of $BURST good reads" if $1 != $BURST;
        }
        else {
            push @hold_problems, "round $round: reader $pid answered '$l' while the lock was held";
        }
    }
    my $after = u32_at($LOCK0 + 60);
    push @hold_problems, "round $round: change counter moved from $before to $after under our lock"
        if $after != $before;
    Cache::FastMmap::fc_unlock($h);
}
is_deeply(\@hold_problems, [], "$HOLDS times, while the parent held the page lock, every reader did $BURST good lock-free gets and exists");
is($held_reads, $HOLDS * $BURST * $READERS, "$held_reads reads completed under another process's lock");

# ------------------------------- processes stopped in the middle of a read or write
# A reader is rarely preempted between its lock-free copy of a value and
# the re-check of the counter, and a writer rarely in the middle of a
# change while a reader looks: but those are the moments the protocol is
# for. Here the kernel stops a process (SIGSTOP) wherever it happens to be:
#  - the reader, often inside get; the parent then changes the page (sets
#    that compact it) and resumes the reader, whose re-check must fail;
#  - the writer, sometimes half-way through a change; the reader goes on
#    meanwhile and must not use what it sees (real code: it waits for the
#    lock the stopped writer holds until the writer is resumed).
my @writers = grep { $kid{$_}{role} eq 'writer' } @kids;
my ($stops, $stops_skipped, $wstops, %stop_status) = (0, 0, 0);

# Stops $pid, runs $code, resumes $pid whatever happens; false if $pid
# could not be stopped.
sub while_stopped {
    my ($pid, $code) = @_;
    kill 'STOP', $pid;
    my $r = waitpid($pid, POSIX::WUNTRACED());
    # ($? does not describe a stop: the native status does)
    unless ($r == $pid && POSIX::WIFSTOPPED(${^CHILD_ERROR_NATIVE})) {
        $stop_status{$pid} = $r == $pid ? "status ${^CHILD_ERROR_NATIVE}" : 'gone';
        kill 'CONT', $pid;
        return 0;
    }
    my $ok = eval { $code->(); 1 };
    my $err = $@;
    kill 'CONT', $pid;    # never leave it stopped
    die $err unless $ok;
    return 1;
}

SKIP: {
    skip 'stopping a reader mid-read needs the glibc lock word layout (Linux)', 3
        unless $^O eq 'linux';
    skip 'asking the kernel for the fcntl lock holder needs a 64-bit struct flock', 3
        if $FCNTL && $Config::Config{longsize} != 8;
    my $pgen = 0;
    CYCLE: while (($stops < $STOPS || $wstops < $STOPS) && Time::HiRes::time() < $end) {
        for my $pid (@readers) {
            while_stopped($pid, sub {
                # a reader stopped while holding the page lock (its lock-free
                # attempt had met a change under way) would block our sets
                if (page0_holder() == $pid) {
                    $stops_skipped++;
                    return;
                }
                for my $n (1 .. 4) {
                    my $k = $KEYS[$n % @KEYS];
                    $parent->set($k, value_for($k, 0, ++$pgen));
                }
                $stops++;
            }) or last CYCLE;
        }
        Time::HiRes::sleep(0.0002 + rand(0.0005));    # let them run on a little
        for my $pid (@writers) {
            while_stopped($pid, sub { Time::HiRes::sleep(0.0003); $wstops++ }) or last CYCLE;
        }
        Time::HiRes::sleep(0.0002 + rand(0.0005));
    }
    is_deeply(\%stop_status, {}, 'children stopped and resumed cleanly');
    cmp_ok($stops, '>=', $STOPS, "readers stopped $STOPS times while the page changed");
    cmp_ok($wstops, '>=', $STOPS, "writers stopped $STOPS times while the readers read");
}
note("readers stopped $stops times with page changes, $stops_skipped times holding the lock; writers stopped $wstops times");

# --------------------------------------------------------- quotas, then stop
my @early;
for my $pid (@kids) {
    my $l = next_line($kid{$pid}, $end, 1);
    push @early, "$kid{$pid}{role} $kid{$pid}{id} said '$l' before its quota" if defined $l && $l ne '';
}
is_deeply(\@early, [], 'no child stopped early');
is_deeply([map { "$kid{$_}{role} $kid{$_}{id}" } grep { !$kid{$_}{quota} } @kids], [],
          "every reader did $READ_QUOTA reads and every writer $WRITE_QUOTA sets while the others ran");
syswrite($kid{$_}{cmd}, 'S') for @kids;
my %res;
for my $pid (@kids) {
    my $l = next_line($kid{$pid}, Time::HiRes::time() + 30) // '';
    $res{$pid} = { $l =~ /(\w+)=(\d+)/g };
    ($res{$pid}{examples}) = $l =~ /examples=(.*)\z/;
}
my $st = FMTest::wait_children(30, @kids);
is_deeply([map { FMTest::describe_status($st->{$_}) } @kids], [('exit 0') x @kids], 'every child finished');

my %total;
for my $pid (@readers) {
    $total{$_} += $res{$pid}{$_} // 0 for qw(reads exists torn missing backwards);
    diag("reader $pid: $res{$pid}{examples}") if $res{$pid}{examples};
}
my $sets = 0;
$sets += $res{$_}{sets} // 0 for grep { $kid{$_}{role} eq 'writer' } @kids;
note("reads $total{reads}, exists $total{exists}, sets $sets; bad: torn $total{torn}, missing $total{missing}, backwards $total{backwards}");
cmp_ok($total{reads}, '>=', $READERS * $READ_QUOTA, 'the readers read');
cmp_ok($sets, '>=', $WRITERS * $WRITE_QUOTA, 'the writers wrote');
is_deeply([@total{qw(torn missing backwards)}], [0, 0, 0],
          'no torn or foreign value, no miss, no value going back in time (torn, missing, backwards)');
is_deeply([map { $res{$_}{refused} } grep { $kid{$_}{role} eq 'writer' } @kids], [(0) x $WRITERS],
          'every set was stored');

# the page is still sound: every key reads back (with the lock, as a new
# time forces) and the cache file validates
Cache::FastMmap::_set_time_override($T0 + 1);
is_deeply([grep { !good_value($_, $parent->get($_)) } @KEYS], [], 'every key reads back after the stress');
is($parent->repaired_pages, 0, 'no page needed a repair');
{
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    my $check = Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '',
                                     unlink_on_exit => 0, test_file => 1);
    is($check->repaired_pages, 0, 'a full validation of the file (test_file) finds nothing to repair');
    is_deeply(\@w, [], '... and warns about nothing');
}

done_testing;
