#!perl
# Torture test (issue 5 item 6): writers are SIGKILLed at random moments and
# respawned while readers check that every value they read carries a valid
# checksum for its key; counters are updated with get_and_set. Reports
# kills, reads, corrupt reads (must be 0) and stalls (must be 0). A stall is
# an operation that takes more than 5 s: every reader operation runs under
# alarm(5) with the default action, so a blocked reader is killed by the
# kernel and shows up as "signal 14".
#
# Duration: $ENV{FASTMMAP_TORTURE_SECONDS} (default 20).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);

my $SECONDS = $ENV{FASTMMAP_TORTURE_SECONDS} || 20;
my $WRITERS = 3;
my $READERS = 2;
my $STALL = 5;
my $COUNTERS = 4;
my @KEYS = map { "t$_" } 1 .. 300;
my %GEOM = (num_pages => 7, page_size => 8192, serializer => '', unlink_on_exit => 0);
my %CGEOM = (num_pages => 1, page_size => 65536, serializer => '', unlink_on_exit => 0);

# whole-test bound: a hang anywhere fails the test instead of hanging CI
$SIG{ALRM} = 'DEFAULT';
alarm($SECONDS + 180);

sub value_for {
    my ($key, $gen, $pad) = @_;
    my $body = "$key|$gen|" . ('z' x $pad);
    return "$body|" . unpack('%32C*', $body);
}
sub value_ok {
    my ($key, $v) = @_;
    return 0 unless defined $v && $v =~ /\A(\Q$key\E\|\d+\|z*)\|(\d+)\z/;
    return unpack('%32C*', $1) == $2 ? 1 : 0;
}
sub counter_val { my $b = "n=$_[0]"; "$b|" . unpack('%32C*', $b) }
sub counter_of {
    my ($v) = @_;
    return 0 unless defined $v;
    return undef unless $v =~ /\An=(\d+)\|(\d+)\z/ && unpack('%32C*', "n=$1") == $2;
    return $1;
}

my $file = FMTest::share_file('torture');
my $cfile = FMTest::share_file('counters');
{
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    $c->set($_, value_for($_, 0, 10)) for @KEYS;
    Cache::FastMmap->new(share_file => $cfile, %CGEOM);
}

pipe(my $rep_r, my $rep_w) or die "pipe: $!";
my $deadline = time + $SECONDS;

sub report { my ($w, $line) = @_; syswrite($w, "$line\n") }

sub bad_warning {
    my ($w, $msg) = @_;
    report($w, $msg =~ /^page \d+ of \S+ reinitialised: \S/ ? 'P' : "X $msg" =~ s/\n/ /gr);
}

sub writer {
    return FMTest::fork_child($SECONDS + 60, sub {
        close $rep_r;
        srand($$ ^ int(time * 1000));
        local $SIG{__WARN__} = sub { bad_warning($rep_w, $_[0]) };
        my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
        my $cc = Cache::FastMmap->new(share_file => $cfile, %CGEOM);
        for (my $gen = 1;; $gen++) {
            my $k = $KEYS[rand @KEYS];
            my $op = rand 100;
            if ($op < 60) {
                $c->set($k, value_for($k, $gen, int rand 400));
            }
            elsif ($op < 65) {
                $c->remove($k);
            }
            elsif ($op < 75) {
                $c->get_and_set($k, sub { value_for($k, $gen, int rand 100) });
            }
            else {
                my $j = int rand $COUNTERS;
                my $bad;
                $cc->get_and_set("c$j", sub {
                    my $n = counter_of($_[1]);
                    $bad = 1, $n = 0 unless defined $n;
                    counter_val($n + 1);
                });
                report($rep_w, $bad ? "C c$j bad counter" : "I $j");
            }
        }
    });
}

sub reader {
    return FMTest::fork_child($SECONDS + 60, sub {
        close $rep_r;
        srand($$ ^ int(time * 1000));
        local $SIG{__WARN__} = sub { bad_warning($rep_w, $_[0]) };
        $SIG{ALRM} = 'DEFAULT';
        alarm($STALL);
        my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
        my $cc = Cache::FastMmap->new(share_file => $cfile, %CGEOM);
        alarm(0);
        my ($reads, $t) = (0, time);
        while (time < $deadline) {
            my $op = rand 100;
            alarm($STALL);
            if ($op < 90) {
                my $k = $KEYS[rand @KEYS];
                my $v = $c->get($k);
                $reads++;
                report($rep_w, "C $k " . substr($v, 0, 60)) if defined $v && !value_ok($k, $v);
            }
            elsif ($op < 97) {
                my $j = int rand $COUNTERS;
                my $v = $cc->get("c$j");
                $reads++;
                report($rep_w, "C c$j " . substr($v, 0, 60)) unless defined counter_of($v);
            }
            else {
                for my $e ($c->get_keys(2)) {
                    $reads++;
                    report($rep_w, "C $e->{key} (get_keys) " . substr($e->{value} // 'undef', 0, 60))
                        unless value_ok($e->{key}, $e->{value});
                }
            }
            alarm(0);
            if (time - $t > 0.5) {
                report($rep_w, "R $reads");
                ($reads, $t) = (0, time);
            }
        }
        report($rep_w, "R $reads");
        return 0;
    });
}

my %writer = map { writer() => 1 } 1 .. $WRITERS;
my %reader = map { reader() => 1 } 1 .. $READERS;
my (%stat, @corrupt, @odd, @problems, %incs);
$stat{$_} = 0 for qw(kills reads corrupt stalls repairs);

my $buf = '';
my $sel = IO::Select->new($rep_r);
my $drain = sub {
    my ($wait) = @_;
    while ($sel->can_read($wait)) {
        my $n = sysread($rep_r, my $chunk, 65536);
        last unless $n;
        $buf .= $chunk;
        $wait = 0;
    }
    while ($buf =~ s/\A([^\n]*)\n//) {
        my $l = $1;
        if    ($l =~ /^R (\d+)/) { $stat{reads} += $1 }
        elsif ($l =~ /^I (\d+)/) { $incs{$1}++ }
        elsif ($l =~ /^C (.*)/)  { $stat{corrupt}++; push @corrupt, $1 }
        elsif ($l eq 'P')        { $stat{repairs}++ }
        elsif ($l =~ /^X (.*)/)  { push @odd, $1 }
    }
};

my $next_kill = time + 0.05 + rand 0.4;
while (time < $deadline) {
    $drain->(0.02);
    # readers that ended early: a stall (alarm) or a failure
    for my $pid (keys %reader) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        next unless $r == $pid;
        delete $reader{$pid};
        my $how = FMTest::describe_status($?);
        if ($how eq "signal 14") { $stat{stalls}++ }
        elsif (time < $deadline - 1) { push @problems, "reader $pid ended early: $how" }
        $reader{ reader() } = 1 if time < $deadline - 1;
    }
    for my $pid (keys %writer) {   # a writer must only end by our SIGKILL
        my $r = waitpid($pid, POSIX::WNOHANG());
        next unless $r == $pid;
        delete $writer{$pid};
        push @problems, "writer $pid ended by itself: " . FMTest::describe_status($?);
        $writer{ writer() } = 1;
    }
    if (time >= $next_kill) {
        my @w = keys %writer;
        my $victim = $w[rand @w];
        kill 'KILL', $victim;
        waitpid($victim, 0);
        delete $writer{$victim};
        $stat{kills}++;
        $writer{ writer() } = 1;
        $next_kill = time + 0.05 + rand 0.4;
    }
}

# stop: writers are killed (their last increments may be unreported, so they
# count as kills for the counter bound), readers finish by themselves
kill 'KILL', keys %writer;
my $wst = FMTest::wait_children(30, keys %writer);
$stat{final_kills} = scalar keys %writer;
my $rst = FMTest::wait_children($STALL + 30, keys %reader);
for my $pid (keys %$rst) {
    my $how = FMTest::describe_status($rst->{$pid});
    if ($how eq 'signal 14') { $stat{stalls}++ }
    elsif ($how ne 'exit 0') { push @problems, "reader $pid: $how" }
}
close $rep_w;
$drain->(1);

# a final check with a fresh process: every entry valid, counters bounded
my $final = FMTest::tmpdir() . '/final';
my $fst = FMTest::run_in_child(60, sub {
    my @w;
    local $SIG{__WARN__} = sub { push @w, $_[0] };
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    my $cc = Cache::FastMmap->new(share_file => $cfile, %CGEOM);
    my @bad = grep { my $v = $c->get($_); defined $v && !value_ok($_, $v) } @KEYS;
    push @bad, map { $_->{key} } grep { !value_ok($_->{key}, $_->{value}) } $c->get_keys(2);
    for my $k (@KEYS[0 .. 50]) {   # a set is readable right after it
        push @bad, "set:$k" unless $c->set($k, value_for($k, 1, 1))
                                && ($c->get($k) // '') eq value_for($k, 1, 1);
    }
    open my $fh, '>', $final or die;
    print $fh join(' ', 'bad', @bad), "\n";
    print $fh join(' ', 'counters', map { counter_of($cc->get("c$_")) // 'CORRUPT' } 0 .. $COUNTERS - 1), "\n";
    print $fh "warn $_" for @w;
    close $fh;
    return 0;
});
is(FMTest::describe_status($fst), 'exit 0', 'final check process ran (no hang, no crash)');
my @fin = do { open my $fh, '<', $final or die "$final: $!"; <$fh> };
my ($bad_line) = grep { /^bad/ } @fin;
my ($cnt_line) = grep { /^counters/ } @fin;
my @final_warn = grep { /^warn / } @fin;

diag(sprintf "torture %ds: kills %d, reads %d, corrupt reads %d, stalls %d, pages repaired %d",
     $SECONDS, $stat{kills}, $stat{reads}, $stat{corrupt}, $stat{stalls}, $stat{repairs});
my @cnt = (split ' ', $cnt_line // '')[1 .. $COUNTERS];
diag(join ', ', map { "counter $_: value " . ($cnt[$_] // '?') . ", increments reported "
                      . ($incs{$_} // 0) } 0 .. $COUNTERS - 1);

ok($stat{kills} >= 5, "writers were SIGKILLed ($stat{kills})");
ok($stat{reads} > 0, "readers read ($stat{reads})");
is($stat{corrupt}, 0, 'corrupt reads: 0') or diag(join "\n", @corrupt[0 .. ($#corrupt < 9 ? $#corrupt : 9)]);
is($stat{stalls}, 0, "stalls (an operation over ${STALL}s): 0");
is_deeply(\@problems, [], 'no process ended unexpectedly');
is_deeply(\@odd, [], 'every warning was a documented page-repair warning');
is($bad_line // '', "bad\n", 'final check: every entry valid, fresh sets read back');
for my $j (0 .. $COUNTERS - 1) {
    my $v = $cnt[$j];
    ok(defined $v && $v ne 'CORRUPT' && $v <= ($incs{$j} // 0) + $stat{kills} + $stat{final_kills},
       "counter $j is valid and never more than the increments made");
}
is_deeply([grep { !/reinitialised/ } @final_warn], [], 'final check: only repair warnings');

done_testing;
