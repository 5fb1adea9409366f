#!perl
# Cross-process atomicity (SPEC 1.5 get_and_set/get_and_remove, 1.8 fork):
# a cache created in the parent and shared by forked children; concurrent
# read-modify-write must never lose an update and get_and_remove must hand
# each value to exactly one process. Every child is bounded by a kernel
# alarm; the parent reaps all of them against a deadline.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $CHILDREN = 3;
my $N = 5000;

# ------------------------------------------------ one shared counter
{
    my $c = FMTest::new_cache(num_pages => 7, page_size => 16384);
    $c->set('counter', 0);
    my $bar = FMTest::barrier();
    my @pids = map {
        FMTest::fork_child(120, sub {
            $bar->wait;
            $c->get_and_set('counter', sub { $_[1] + 1 }) for 1 .. $N;
            return 0;
        })
    } 1 .. $CHILDREN;
    $bar->release;
    # the parent takes part too
    my $mine = 0;
    for (1 .. $N) {
        my ($v, $did) = $c->get_and_set('counter', sub { $_[1] + 1 });
        $mine++ if $did;
    }
    my $st = FMTest::wait_children(150, @pids);
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], [('exit 0') x $CHILDREN],
              'all children finished cleanly');
    is($mine, $N, "parent: every get_and_set stored");
    is($c->get('counter'), ($CHILDREN + 1) * $N,
       ($CHILDREN + 1) . " processes x $N get_and_set increments: exact total");
}

# ------------------------------------------------ several counters, raw mode
{
    my @keys = map { "key$_" } 0 .. 9;
    my $c = FMTest::new_cache(num_pages => 5, page_size => 8192, serializer => '');
    $c->set($_, 0) for @keys;
    my $bar = FMTest::barrier();
    my @pids = map {
        my $child = $_;
        FMTest::fork_child(120, sub {
            $bar->wait;
            for my $i (1 .. 300) {
                # each child walks the keys in its own order
                for my $j (0 .. $#keys) {
                    my $k = $keys[($j * ($child + 2) + $i) % @keys];
                    $c->get_and_set($k, sub { $_[1] + 1 });
                }
            }
            return 0;
        })
    } 1 .. $CHILDREN;
    $bar->release;
    my $st = FMTest::wait_children(150, @pids);
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], [('exit 0') x $CHILDREN],
              'all children finished cleanly');
    is_deeply({ map { $_ => $c->get($_) } @keys }, { map { $_ => $CHILDREN * 300 } @keys },
              "$CHILDREN processes x 300 increments on each of 10 keys: exact totals");
}

# ------------------------------------------------ get_and_remove hands out each token once
{
    my $T = 600;
    my $c = FMTest::new_cache(num_pages => 5, page_size => 16384, serializer => '');
    $c->set("tok$_", "value$_") for 1 .. $T;
    my $bar = FMTest::barrier();
    my $dir = FMTest::tmpdir();
    my @pids = map {
        my $child = $_;
        FMTest::fork_child(120, sub {
            $bar->wait;
            open(my $out, '>', "$dir/tokens.$child") or die "open: $!";
            for my $n (1 .. $T) {
                my $t = $child % 2 ? $n : $T + 1 - $n;     # half walk backwards
                my ($v, $did) = $c->get_and_remove("tok$t");
                print $out "BAD $t\n" if defined $v && !$did;
                print $out "BAD $t value\n" if defined $v && $v ne "value$t";
                print $out "GOT $t\n" if $did;
            }
            close $out or die "close: $!";
            return 0;
        })
    } 1 .. $CHILDREN;
    $bar->release;
    my $st = FMTest::wait_children(150, @pids);
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], [('exit 0') x $CHILDREN],
              'all children finished cleanly');
    my (%got, @bad);
    for my $child (1 .. $CHILDREN) {
        open(my $in, '<', "$dir/tokens.$child") or next;
        while (<$in>) {
            push @bad, "child $child: $_" if /^BAD/;
            $got{$1}++ if /^GOT (\d+)/;
        }
    }
    is("@bad", '', 'never a value with a false DidDel');
    is(scalar(keys %got), $T, 'every token taken');
    is(scalar(grep { $got{$_} != 1 } keys %got), 0, 'each token taken exactly once');
    is(scalar(my @k = $c->get_keys(0)), 0, 'cache empty afterwards');
}

done_testing;
