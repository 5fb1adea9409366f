#!perl
# Processes SIGKILLed while they hold a page lock, or in the middle of
# changing a page, never block anyone and never leave a wrong value behind
# (issue 5, DESIGN 3 and 5: robust mutexes + the "being mutated" marker).
#
#  1. A victim holding a page lock in a get_and_set callback is killed: the
#     parent's next access to that page gets through at once, other keys are
#     intact, and a page that is still valid is not "repaired".
#  2. A victim killed in a write_back write_cb, i.e. AFTER it changed the page
#     in the same lock session: the marker is set while it hangs; the next
#     locker validates the page, clears the marker, and carries on.
#  3. The same, but the page is damaged while the victim holds it (as a torn
#     update would leave it): a slot count off by one, or one item whose
#     header is garbage. The next locker repairs it with the warning.
#     Cases 1-3 also check that the page is really sound afterwards, not
#     just that a repair was counted: every entry the page held at the kill
#     (read from the file) reads back with its value -- all of them, but the
#     one garbage item --, get_keys agrees with get, new sets work, and a
#     full validation (test_file) of the file finds nothing left to repair.
#     A repair that only counts, warns and resets the lock fails this; so
#     does one that empties the page.
#  4. A writer killed at random moments of a loop of sets, removes and
#     get_and_sets, several rounds: after each kill every key reads back
#     either undef or a value that was written for that key (values carry
#     their key and a checksum), nothing blocks, repairs are counted sanely,
#     and the file then passes a full validation.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use Time::HiRes ();
use Storable ();

sub value_for {
    my ($key, $gen, $pad) = @_;
    my $body = "$key|$gen|" . ('p' x ($pad // 0));
    return "$body|" . unpack('%32C*', $body);
}
sub value_ok {
    my ($key, $v) = @_;
    return 0 unless defined $v && $v =~ /\A(\Q$key\E\|\d+\|p*)\|(\d+)\z/;
    return unpack('%32C*', $1) == $2 ? 1 : 0;
}

sub wait_for_byte {
    my ($fh, $timeout) = @_;
    return undef unless IO::Select->new($fh)->can_read($timeout);
    my $n = sysread($fh, my $b, 1);
    return $n ? $b : undef;
}

sub read_u32 {
    my ($file, $off) = @_;
    open my $fh, '<:raw', $file or die "$file: $!";
    sysseek($fh, $off, 0) or die;
    sysread($fh, my $b, 4) == 4 or die "short read";
    return unpack 'L', $b;
}
sub write_u32 {
    my ($file, $off, $v) = @_;
    open my $fh, '+<:raw', $file or die "$file: $!";
    sysseek($fh, $off, 0) or die;
    syswrite($fh, pack('L', $v)) == 4 or die "short write";
    close $fh;
}

# Runs $code in the parent with a kernel-enforced bound: a hang kills the
# test (and shows up as a failure) instead of hanging the suite.
sub bounded {
    my ($secs, $code) = @_;
    local $SIG{ALRM} = 'DEFAULT';
    alarm($secs);
    my @r = $code->();
    alarm(0);
    return wantarray ? @r : $r[0];
}

# Keys that hash to the same page as $key.
sub same_page_keys {
    my ($c, $key, $n) = @_;
    my ($page) = Cache::FastMmap::fc_hash($c->{Cache}, $key);
    my @k;
    for (my $i = 0; @k < $n; $i++) {
        push @k, "mate$i" if (Cache::FastMmap::fc_hash($c->{Cache}, "mate$i"))[0] == $page;
    }
    return ($page, @k);
}

# The entries (key => value) that page $page of $file holds, read from the
# file (layout: see FMTest's page_off and slot_pos).
# Only for a page nobody is changing. Also returns key => item offset.
sub page_entries {
    my ($file, $page, %geom) = @_;
    my $base = FMTest::page_off($geom{page_size}, $page);
    open my $fh, '<:raw', $file or die "$file: $!";
    sysseek($fh, $base, 0) or die;
    sysread($fh, my $p, $geom{page_size}) == $geom{page_size} or die "short read";
    my $nslots = unpack 'L', substr($p, 4, 4);
    my (%val, %at);
    for my $i (0 .. $nslots - 1) {
        my $o = unpack 'L', substr($p, FMTest::slot_pos($i), 4);
        next if $o <= 1;
        my ($kl, $vl) = unpack 'L2', substr($p, $o + 16, 8);
        my $k = substr($p, $o + 24, $kl);
        $val{$k} = substr($p, $o + 24 + $kl, $vl);
        $at{$k} = $base + $o;
    }
    return (\%val, \%at);
}

# Opens $file with test_file => 1 (every page fully validated, the bad ones
# repaired) in a bounded child: (pages it had to repair, its warnings),
# or (undef, [how the child ended]) if it did not report.
my $VALIDATE = FMTest::tmpdir() . '/validate-report';
sub validate_file {
    my ($file, %geom) = @_;
    unlink $VALIDATE;
    my $st = FMTest::run_in_child(30, sub {
        my @w;
        local $SIG{__WARN__} = sub { push @w, $_[0] };
        my $v = Cache::FastMmap->new(share_file => $file, %geom, serializer => '',
                                     unlink_on_exit => 0, test_file => 1);
        Storable::nstore({ repaired => $v->repaired_pages, warnings => \@w }, $VALIDATE);
        return 0;
    });
    my $r = -e $VALIDATE ? Storable::retrieve($VALIDATE) : undef;
    return $r ? ($r->{repaired}, $r->{warnings}) : (undef, [FMTest::describe_status($st)]);
}

# Is page $page of the cache behind $c sound after a kill (and a repair)?
# $expect: key => value of every entry that must have survived; $gone: keys
# that must read as missing. Returns a list of problems.
sub page_problems {
    my ($c, $file, $page, $expect, $gone, %geom) = @_;
    my @p;
    for my $k (sort keys %$expect) {
        my $v = eval { bounded(20, sub { $c->get($k) }) };
        push @p, "entry $k " . (defined $v ? 'changed' : 'lost') . ($@ ? ": $@" : '')
            unless defined $v && $v eq $expect->{$k};
    }
    for my $k (@$gone) {
        my $v = eval { bounded(20, sub { $c->get($k) }) };
        push @p, "dropped entry $k still reads " . (defined $v ? "'$v'" : "an error: $@")
            if defined $v || $@;
    }
    my @listed = eval { bounded(20, sub { $c->get_keys(2) }) };
    push @p, "get_keys died: $@" if $@;
    my %listed = map { $_->{key} => $_->{value} } @listed;
    for my $k (sort keys %listed) {
        my $v = $c->get($k);
        push @p, "get_keys lists $k with a value get does not return"
            unless defined $v && defined $listed{$k} && $v eq $listed{$k};
    }
    push @p, map { "get_keys misses $_" } grep { !exists $listed{$_} } sort keys %$expect;
    # new entries on that page can be stored and read back
    my $n = 0;
    for (my $i = 0; $n < 10; $i++) {
        my $k = "new$i";
        next unless (Cache::FastMmap::fc_hash($c->{Cache}, $k))[0] == $page;
        $n++;
        my $ok = eval { bounded(20, sub { $c->set($k, value_for($k, 1, 10)) }) };
        my $v = eval { $c->get($k) };
        push @p, "a new set of $k on the page " . ($ok ? 'did not read back' : "failed: $@")
            unless $ok && defined $v && $v eq value_for($k, 1, 10);
    }
    my ($repaired, $w) = validate_file($file, %geom);
    push @p, "a full validation afterwards had to repair "
        . ($repaired // 'undef') . " page(s): @$w" if ($repaired // -1) != 0 || @$w;
    return @p;
}

# ----------------------------------------- 1. killed in a get_and_set callback
{
    my $file = FMTest::share_file('gas');
    my $c = Cache::FastMmap->new(share_file => $file, num_pages => 5, page_size => 8192,
                                 serializer => '', unlink_on_exit => 0);
    my ($page, @mates) = same_page_keys($c, 'victim', 10);
    $c->set('victim', 10);
    $c->set($_, value_for($_, 0)) for @mates;
    $c->set("other$_", value_for("other$_", 0)) for 1 .. 50;

    pipe(my $r, my $w) or die;
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        $c->get_and_set('victim', sub { syswrite($w, 'L'); sleep 1 while 1; 99 });
        return 9;
    });
    close $w;
    is(wait_for_byte($r, 30), 'L', 'get_and_set victim holds the page lock');
    kill 'KILL', $pid;
    my $st = FMTest::wait_children(30, $pid);
    is(FMTest::describe_status($st->{$pid}), 'signal 9', 'victim was SIGKILLed');

    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    is(bounded(20, sub { $c->get('victim') }), 10, 'parent reads the locked key (alarm-bounded): old value');
    is(bounded(20, sub { $c->get_and_set('victim', sub { $_[1] + 1 }) }), 11,
       'get_and_set on the page works');
    is_deeply([grep { !value_ok($_, $c->get($_)) } @mates, map { "other$_" } 1 .. 50], [],
              'every other key (same page and other pages) intact');
    is($c->repaired_pages, 0, 'a valid page is not counted as repaired');
    is_deeply(\@w, [], 'no warnings');
    my %expect = map { $_ => value_for($_, 0) } @mates;
    $expect{victim} = 11;
    is_deeply([page_problems($c, $file, $page, \%expect, [], num_pages => 5, page_size => 8192)], [],
              'the page is sound: entries, get_keys, new sets, full validation');
}

# ----------------------- 2. and 3. killed after changing the page (write_cb)
for my $damage (0, 1, 2) {
    my $tag = ('valid', 'slot count damaged while held', 'an item damaged while held')[$damage];
    my $file = FMTest::share_file("wb$damage");
    my %geom = (num_pages => 3, page_size => 4096);
    my $hold = 0;
    my ($r, $w);
    my $c = Cache::FastMmap->new(share_file => $file, %geom, serializer => '',
                                 unlink_on_exit => 0, write_action => 'write_back',
                                 write_cb => sub { if ($hold) { syswrite($w, 'L'); sleep 1 while 1 } });
    # fill one page with dirty entries until a set has to expunge (the
    # victim's set will then evict dirty entries and call write_cb while the
    # page is locked and already changed)
    my ($page, @mates) = same_page_keys($c, 'seed', 100);
    $c->set($_, value_for($_, 0, 60)) for @mates;
    my $lock_entry = FMTest::lock_entry_off($geom{page_size}, $page);
    is(read_u32($file, $lock_entry + 56), 0, "$tag: marker clear before the victim runs");

    pipe($r, $w) or die;
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        $hold = 1;
        # a set on the (full) page: expunge marks and changes the page, then
        # write_cb is called with the page still locked
        $c->set("$_", value_for($_, 1, 60)) for map { "late$_" } 1 .. 400;
        return 9;
    });
    close $w;
    my $got = wait_for_byte($r, 30);
    is($got, 'L', "$tag: victim is in write_cb with the page locked");
    # the victim may be on another page than $page: find the marked page
    my @marked = grep { read_u32($file, FMTest::lock_entry_off($geom{page_size}, $_) + 56) }
        0 .. $geom{num_pages} - 1;
    is(scalar @marked, 1, "$tag: exactly one page is marked as being changed");
    my $vpage = $marked[0] // 0;
    my $page_off = FMTest::page_off($geom{page_size}, $vpage);
    # what the page holds now, every entry complete (the victim sleeps in
    # write_cb, between its expunge and its write)
    my ($held, $at) = page_entries($file, $vpage, %geom);
    ok(scalar(keys %$held) >= 5, "$tag: the victim's page holds entries (" . scalar(keys %$held) . ')');
    my @gone;
    if ($damage == 1) {
        # a torn update: the free slot count is off by one (only a full
        # validation notices this)
        write_u32($file, $page_off + 8, read_u32($file, $page_off + 8) - 1);
    }
    elsif ($damage == 2) {
        # a torn item: its key length runs past the page. That entry is
        # lost; every other one must survive the repair.
        my ($k) = sort keys %$held;
        write_u32($file, $at->{$k} + 16, 0x7fff0000);
        @gone = ($k);
        delete $held->{$k};
    }
    kill 'KILL', $pid;
    my $st = FMTest::wait_children(30, $pid);
    is(FMTest::describe_status($st->{$pid}), 'signal 9', "$tag: victim SIGKILLed");

    my @w;
    local $SIG{__WARN__} = sub { push @w, $_[0] };
    # touch every page (get_keys locks each one), bounded
    my @keys = eval { bounded(20, sub { $c->get_keys(0) }) };
    is($@, '', "$tag: get_keys after the kill works");
    ok(scalar @keys, "$tag: get_keys after the kill returns entries");
    is(read_u32($file, FMTest::lock_entry_off($geom{page_size}, $vpage) + 56), 0,
       "$tag: marker cleared by the next locker");
    my @bad = grep { my $v = eval { $c->get($_) }; $@ || (defined $v && !value_ok($_, $v)) } @keys;
    is_deeply(\@bad, [], "$tag: every value left is one written for its key");
    my @problems = page_problems($c, $file, $vpage, $held, \@gone, %geom);
    if ($damage) {
        is($c->repaired_pages, 1, "$tag: the page was repaired");
        is(scalar @w, 1, "$tag: one warning");
        like($w[0] // '', qr/^page $vpage of \Q$file\E reinitialised: \S/, "$tag: documented warning");
    }
    else {
        is($c->repaired_pages, 0, "$tag: a valid page is validated, not repaired");
        is_deeply(\@w, [], "$tag: no warning");
    }
    is_deeply(\@problems, [], "$tag: the page is sound: every entry it held"
              . (@gone ? ' but the damaged one' : '') . ', get_keys, new sets, full validation');
    $hold = 0;
    ok(eval { bounded(20, sub { $c->set('after', value_for('after', 7)) }) }, "$tag: set works afterwards");
    is(eval { $c->get('after') }, value_for('after', 7), "$tag: and reads back");
}

# ------------------------------------------------------- 4. random kills
{
    my $ROUNDS = 12;
    my $file = FMTest::share_file('loop');
    my %geom = (num_pages => 3, page_size => 4096);
    my $c = Cache::FastMmap->new(share_file => $file, %geom, serializer => '', unlink_on_exit => 0);
    my @KEYS = map { "k$_" } 1 .. 150;
    my $report = FMTest::tmpdir() . '/loop-report';
    my (@problems, $total_repaired, $kills);
    srand(my $seed = $ENV{FASTMMAP_KILL_SEED} // (time ^ $$));
    for my $round (1 .. $ROUNDS) {
        pipe(my $r, my $w) or die;
        my $pid = FMTest::fork_child(60, sub {
            close $r;
            srand($$ ^ time);
            my $c2 = Cache::FastMmap->new(share_file => $file, %geom, serializer => '',
                                          unlink_on_exit => 0);
            syswrite($w, 'R');
            close $w;
            for (my $gen = 1;; $gen++) {
                my $k = $KEYS[rand @KEYS];
                my $op = rand 10;
                if ($op < 7) { $c2->set($k, value_for($k, $gen, int rand 300)) }
                elsif ($op < 8) { $c2->remove($k) }
                elsif ($op < 9) { $c2->get_and_set("n$k", sub { value_for("n$k", $gen, 5) }) }
                else { $c2->get($k) }
            }
        });
        close $w;
        wait_for_byte($r, 30);
        close $r;
        Time::HiRes::sleep(0.02 + rand 0.25);
        kill 'KILL', $pid;
        my $st = FMTest::wait_children(30, $pid);
        $kills++ if FMTest::describe_status($st->{$pid}) eq 'signal 9';

        # a checker with a fresh handle, bounded by a kernel alarm
        unlink $report;
        my $cst = FMTest::run_in_child(30, sub {
            my @w;
            local $SIG{__WARN__} = sub { push @w, $_[0] };
            my $c3 = Cache::FastMmap->new(share_file => $file, %geom, serializer => '',
                                          unlink_on_exit => 0);
            my @bad = grep { my $v = $c3->get($_); defined $v && !value_ok($_, $v) }
                      @KEYS, map { "n$_" } @KEYS;
            my @listed = $c3->get_keys(2);
            push @bad, map { "listed $_->{key}" }
                       grep { !value_ok($_->{key}, $_->{value}) } @listed;
            my @lost;
            for my $k (map { "fresh$round-$_" } 1 .. 20) {
                $c3->set($k, value_for($k, 0));
                push @lost, $k unless ($c3->get($k) // '') eq value_for($k, 0);
            }
            # and now a full validation finds nothing left to repair
            my @vw;
            my $v = do {
                local $SIG{__WARN__} = sub { push @vw, $_[0] };
                Cache::FastMmap->new(share_file => $file, %geom, serializer => '',
                                     unlink_on_exit => 0, test_file => 1);
            };
            Storable::nstore({ bad => \@bad, lost => \@lost, warnings => \@w,
                               repaired => $c3->repaired_pages,
                               unsound => [($v->repaired_pages ? ('pages repaired: ' . $v->repaired_pages) : ()), @vw] },
                             $report);
            return 0;
        });
        my $res = -e $report ? Storable::retrieve($report) : undef;
        if (FMTest::describe_status($cst) ne 'exit 0' || !$res) {
            push @problems, "round $round: checker " . FMTest::describe_status($cst);
            next;
        }
        push @problems, "round $round: wrong values: @{ $res->{bad} }" if @{ $res->{bad} };
        push @problems, "round $round: fresh sets lost: @{ $res->{lost} }" if @{ $res->{lost} };
        push @problems, "round $round: full validation afterwards: @{ $res->{unsound} }" if @{ $res->{unsound} };
        my @pw = grep { /^page \d+ of \Q$file\E reinitialised: \S/ } @{ $res->{warnings} };
        push @problems, "round $round: unexpected warnings: @{ $res->{warnings} }"
            if @pw != @{ $res->{warnings} };
        push @problems, "round $round: repaired_pages $res->{repaired} vs " . @pw . " warnings"
            if $res->{repaired} != @pw;
        push @problems, "round $round: $res->{repaired} pages repaired after one kill"
            if $res->{repaired} > 1;
        $total_repaired += $res->{repaired};

        # and the parent's own old handle is not blocked either
        my $ok = eval { bounded(20, sub { $c->get($KEYS[0]); $c->get_keys(0); 1 }) };
        push @problems, "round $round: parent handle: $@" unless $ok;
    }
    is($kills, $ROUNDS, "$ROUNDS writers SIGKILLed at random moments (seed $seed)");
    is_deeply(\@problems, [], 'after every kill: no hang, no wrong value, sane repair counts');
    note("pages repaired over all rounds: " . ($total_repaired // 0));
    is($c->repaired_pages, 0, 'the parent handle itself repaired nothing it did not see');
}

done_testing;
