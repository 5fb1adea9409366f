# Process size while a write-back cache evicts dirty entries through
# write_cb: a small one-off growth while the first batches are handled, and
# no growth per operation afterwards.
#
# The size is VmSize from /proc/self/status (the whole address space: heap,
# mappings, stacks).  Each workload makes a fresh cache, measures, then does
# ROUNDS rounds of SETS sets of new keys; every round evicts thousands of
# dirty entries, each handed to write_cb.  Nothing else runs between the
# measurements (the test assertions come after the last round).
#
# What the numbers look like (KB, glibc 2.36, Debian 12).  Here, 10 runs:
#
#   workload                  first round   later rounds
#   1m cache, Storable        176 .. 192    at most one bump of 32 .. 36
#   1m cache, raw values      244 .. 252    at most one bump of 20 .. 28
#   small pages, raw values   116 .. 120    0
#
# bench/memory-growth.pl runs the same workloads in fresh processes, ours
# and Debian's 1.57 (10 runs each; first round, then the later rounds):
#
#   1m cache, Storable        ours 124 .. 208, then 0 .. 36   1.57 68 .. 76, then 0 .. 68
#   1m cache, raw values      ours 148 .. 164, then 0 .. 28   1.57 68 .. 72, then 0
#   small pages, raw values   ours 0, then 0                  1.57 132, then 0
#
# The growth is malloc's heap reaching the size that the largest batch of
# evicted entries needs (Perl gets one hashref per evicted entry, all alive
# at once, and the engine copies the batch out of the page first), and is
# then reused.  A leak of even one small
# allocation per set (at least 24 bytes: one SV head, or one malloc chunk)
# adds 480 KB or more to every later round of 20,000 sets.  Hence the limits:
#
#   first round        below FIRST_MAX (1.57 and we stay well below it)
#   each later round   below ROUND_MAX
#   all later rounds   below LATER_MAX together
#
# and a control round that keeps 20,000 values alive checks that the
# measurement sees growth of that size at all.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

use constant {
    ROUNDS    => 6,
    SETS      => 20_000,
    FIRST_MAX => 400,    # KB
    ROUND_MAX => 160,    # KB
    LATER_MAX => 256,    # KB
};

sub vmsize_kb {
    open my $fh, '<', '/proc/self/status' or return undef;
    while (my $line = <$fh>) {
        return $1 if $line =~ /^VmSize:\s*(\d+)\s*kB/;
    }
    return undef;
}

plan skip_all => 'no VmSize line in /proc/self/status (not Linux, or /proc '
               . 'is not mounted): this process cannot measure its own size'
    unless defined vmsize_kb();

# Values of a fixed pseudo-random length: the same sequence every run.
my $seed = 12345;
sub next_len {
    my ($lo, $hi) = @_;
    $seed = ($seed * 1103515245 + 12345) % 2147483648;
    return $lo + $seed % ($hi - $lo + 1);
}

my %workloads = (
    'small pages, raw values' => {
        opts => { num_pages => 17, page_size => '8k', raw_values => 1 },
        len  => [2, 16],
    },
    '1m cache, raw values' => {
        opts => { cache_size => '1m', raw_values => 1 },
        len  => [20, 200],
    },
    '1m cache, Storable' => {
        opts => { cache_size => '1m' },
        len  => [20, 200],
    },
);

# Runs $code in a bounded child (forked before any cache exists, so every
# workload starts from the same process state) and returns the list of
# numbers it returns, or dies.
sub measure_in_child {
    my ($what, $code) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = FMTest::fork_child(120, sub {
        close $r;
        my @out = $code->();
        syswrite($w, "@out\n") or die "write: $!";
        close $w;
        return 0;
    });
    close $w;
    my $line = <$r>;
    close $r;
    my $st = FMTest::wait_children(125, $pid)->{$pid};
    die "$what: measuring child failed (" . FMTest::describe_status($st) . ")\n"
        if $st != 0 || !defined $line;
    return split ' ', $line;
}

for my $name (sort keys %workloads) {
    my $w = $workloads{$name};
    my @m = measure_in_child($name, sub {
        my ($reads, $writes, $deletes) = (0, 0, 0);
        my $c = FMTest::new_cache(
            init_file    => 1,
            %{ $w->{opts} },
            write_action => 'write_back',
            read_cb      => sub { $reads++; return undef },
            write_cb     => sub { $writes++ },
            delete_cb    => sub { $deletes++ },
        );
        my $n = 0;
        my (@growth, @written);
        my $before = vmsize_kb();
        for my $round (1 .. ROUNDS) {
            my $w0 = $writes;
            for (1 .. SETS) {
                $n++;
                $c->set("key$n", 'v' x next_len(@{ $w->{len} }));
            }
            my $after = vmsize_kb();
            push @growth, $after - $before;
            push @written, $writes - $w0;
            $before = $after;
        }
        return ($reads + $deletes, @growth, @written);
    });
    my ($others, @growth) = @m;
    my @written = splice @growth, ROUNDS;
    note "$name: VmSize growth per round (KB): @growth; write_cb calls: @written";

    # The rounds measured what they should: dirty entries went to write_cb in
    # every round (thousands of them), and nothing else was called.
    my @quiet = grep { $written[$_] < SETS / 4 } 0 .. $#written;
    ok(@written == ROUNDS && !@quiet, "$name: every round evicted dirty entries through write_cb")
        or diag "write_cb calls per round: @written";
    is($others, 0, "$name: sets of new keys call neither read_cb nor delete_cb");

    my ($first, @later) = @growth;
    cmp_ok($first, '<', FIRST_MAX,
        "$name: the first " . SETS . " sets grow the process by less than " . FIRST_MAX . " KB");
    my @big = grep { $later[$_] >= ROUND_MAX } 0 .. $#later;
    ok(!@big, "$name: no later round grows the process by " . ROUND_MAX . " KB or more")
        or diag "growth of rounds 2.." . ROUNDS . " (KB): @later";
    my $sum = 0;
    $sum += $_ for @later;
    cmp_ok($sum, '<', LATER_MAX,
        "$name: rounds 2.." . ROUNDS . " together grow it by less than " . LATER_MAX . " KB");
}

# Control: the same kind of round, but the values stay alive, as a leak of
# one value per set would keep them.  The measurement must see that.
{
    my ($grew) = measure_in_child('control', sub {
        my $c = FMTest::new_cache(
            init_file    => 1,
            num_pages    => 17,
            page_size    => '8k',
            raw_values   => 1,
            write_action => 'write_back',
            write_cb     => sub { },
        );
        my @kept;
        my $before = vmsize_kb();
        for my $i (1 .. SETS) {
            my $v = 'v' x next_len(2, 16);
            $c->set("control$i", $v);
            push @kept, $v;
        }
        return vmsize_kb() - $before;
    });
    note "control round (values kept alive): VmSize growth $grew KB";
    cmp_ok($grew, '>=', LATER_MAX,
        "keeping " . SETS . " values alive is seen as at least " . LATER_MAX . " KB of growth");
}

done_testing;
