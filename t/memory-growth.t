# Process size while a write-back cache evicts dirty entries through
# write_cb: a small one-off growth while the first batches are handled, and
# no growth per operation afterwards.  (Upstream's own memory test allows
# 500 KB of VmSize growth over 20,000 such sets.)
#
# The size is VmSize from /proc/self/status (the whole address space: heap,
# mappings, stacks).  Each workload makes a fresh cache, measures, then does
# ROUNDS rounds of SETS sets of new keys; every round evicts thousands of
# dirty entries, each handed to write_cb.  Nothing else runs between the
# measurements (the test assertions come after the last round).
#
# How an eviction is handed over, and what it allocates: the engine copies
# the dirty entries an expunge evicts (only those) into a buffer the handle
# reuses; the XS makes Perl values of 32 of them at a time and hands each
# chunk to write_cb, so one chunk's SVs are alive at once, not the batch's.
# The expunge itself sizes its few buffers once and compacts the page in
# place.  What is left is glibc's heap growing once when one of these first
# buffers does not fit in the free heap: it then grows by the request plus
# its 128 KB top pad, and keeps the pad.  So the first round grows by 0 or by
# about 100-140 KB, and later rounds by 0.
#
# Measured (KB, glibc 2.36, Debian 12; first round, then rounds 2..6; min..max
# over fresh processes), ours and Debian's 1.57 (bench/memory-growth.pl):
#
#   workload                  ours                  1.57
#   upstream-shaped           132 .. 244, then 0    276 .. 324, then 0   (30 runs)
#   1m cache, Storable        100 .. 144, then 0    72 .. 100, then 0 .. 68
#   1m cache, raw values      0 .. 132, then 0      68 .. 128, then 0
#   small pages, raw values   0, then 0             0 .. 132, then 0
#
# (upstream-shaped: 17 pages of 64 KB, raw values, 10,000 entries first, then
# values of 2..21 bytes, some utf8, some undef, as upstream's test sets them.)
# Before, Perl got the whole batch as one list (and before that, a hashref
# per entry) and an expunge allocated about 270 KB of transient buffers: up to
# 270 KB on the first round here, 540 KB in upstream's test.
#
# A leak of even one small allocation per set (at least 24 bytes: one SV
# head, or one malloc chunk) adds 480 KB or more to every later round of
# 20,000 sets.  Hence the limits:
#
#   first round        below FIRST_MAX (a glibc top pad and a bit over our worst)
#   each later round   below ROUND_MAX (one top pad: allocator noise, not a leak)
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
    FIRST_MAX => 320,    # KB
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

# Upstream's test's values: 60% short strings, 20% utf8 ones, 20% undef.
sub upstream_value {
    my ($i) = @_;
    my $v = 'x' x next_len(2, 21);
    return $i % 10 < 6 ? $v : $i % 10 < 8 ? "\x{263A}$v" : undef;
}

my %workloads = (
    'upstream-shaped' => {
        opts    => { num_pages => 17, page_size => '64k', raw_values => 1 },
        prefill => 10_000,
        value   => \&upstream_value,
    },
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
        my $value = $w->{value} || sub { 'v' x next_len(@{ $w->{len} }) };
        $c->set("pre$_", 'p' x 20) for 1 .. ($w->{prefill} || 0);
        my (@growth, @written);
        my $before = vmsize_kb();
        for my $round (1 .. ROUNDS) {
            my $w0 = $writes;
            for (1 .. SETS) {
                $n++;
                $c->set("key$n", $value->($n));
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
