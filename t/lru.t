#!perl
# Eviction policy outcomes (SPEC 2.6, 2.8, 5.6, 5.7): LRU keeps recently
# used entries, workload hit rate, a failing oversized set evicts but keeps
# its own old value, deleted-slot reuse under set/remove churn, and
# consistency under interleaved removes and overwrites.
# The clock is advanced through the time override so that "least recently
# used" is well defined (one distinct second per operation).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $now = FMTest::T0;
sub tick { Cache::FastMmap::_set_time_override(++$now) }
tick();

my @chars = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');
sub rstr { my ($min, $max) = @_; join '', map { $chars[rand @chars] } 1 .. $min + int(rand($max - $min + 1)) }

# ------------------------------------------------ 3 pages x 8k: recent 25 stay
{
    srand(4242);
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '');
    my (@recent, $bad);
    my $n = 3000;
    for my $i (1 .. $n) {
        my ($k, $v) = (rstr(10, 20), rstr(20, 40));
        tick();
        $c->set($k, $v);
        push @recent, [$k, $v];
        shift @recent if @recent > 25;
        for (@recent) {
            my $got = $c->get($_->[0]);
            next if defined $got && $got eq $_->[1];
            $bad //= "after set #$i: '$_->[0]' " . (defined $got ? "is '$got'" : 'missing');
        }
    }
    ok(!defined $bad, "3 pages of 8k: the 25 most recently set entries stay readable over $n sets")
        or diag($bad);
    my @k = $c->get_keys(0);
    ok(@k < $n / 2, 'and older entries were evicted (' . scalar(@k) . ' left)');
}

# ------------------------------------------------ 89 x 8k hit rate
{
    srand(1234);
    my $c = FMTest::new_cache(num_pages => 89, page_size => 8192, serializer => '');
    my @keys;
    my $pad = 'x' x 95;
    for (1 .. 1000) {
        my $k = rstr(16, 16);
        push @keys, $k;
        tick();
        $c->set($k, "$k$pad");
    }
    my ($reads, $hits) = (0, 0);
    for (1 .. 10000) {
        tick();
        if (rand() < 0.5) {
            my $k = $keys[rand @keys];
            $reads++;
            my $v = $c->get($k);
            $hits++ if defined $v && $v eq "$k$pad";
        }
        else {
            my $k = rstr(16, 16);
            push @keys, $k;
            $c->set($k, "$k$pad");
        }
    }
    my $rate = $hits / $reads;
    ok($rate > 0.8 && $rate < 0.95, sprintf('89 x 8k pages, 1000 writes + 10000 ops at 50%% reads: hit rate %.4f in (0.8, 0.95)', $rate));
}

# ------------------------------------------------ failing oversized set
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 65536, serializer => '');
    tick();
    $c->set('target', 'old value');
    # 200 entries of ~280 bytes: more than 60% of the page's data area, yet
    # no eviction has been needed so far
    for my $i (1 .. 200) {
        tick();
        $c->set(sprintf('k%03d', $i), 'v' x 250);
    }
    tick();
    is($c->get('target'), 'old value', 'target readable (and now most recently used)');
    my $before = () = $c->get_keys(0);
    is($before, 201, 'all 201 entries present before the oversized set');
    tick();
    my $r = $c->set('target', 'X' x 70000);
    is($r, 0, 'set of a value larger than the page returns 0');
    my $after = () = $c->get_keys(0);
    ok($after < $before, "the failing set still ran the LRU expunge ($before -> $after entries)");
    is($c->get('target'), 'old value', 'the failed set kept the old value (1.61+)');
    ok(defined $c->get(sprintf('k%03d', 200)), 'the most recent other entry survived');
    is($c->set('target', 'new value'), 1, 'a normal set afterwards works');
    is($c->get('target'), 'new value', 'and is readable');
}

# oversized key: refused, no crash, old entries intact
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 16384, serializer => '');
    $c->set('keep', 'me');
    my $big = 'K' x 20000;
    is($c->set($big, 'v'), 0, 'set with a key larger than the page returns 0');
    is($c->get($big), undef, 'that key is not found');
    is($c->get('keep'), 'me', 'other entries intact');
}

# ------------------------------------------------ deleted-slot reuse
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 65536, serializer => '');
    my ($a, $b) = ('a' x 31000, 'b' x 31000);
    is($c->set('A', $a), 1, 'first 31000-byte value stored');
    is($c->set('B', $b), 1, 'second 31000-byte value stored');
    my $bad;
    # the churning entry is tiny (28 bytes a time), so the page's free bytes
    # outlast 90 rounds; only slot pressure could force an expunge, and the
    # LRU victims of such an expunge would be A and B (oldest)
    for my $round (1 .. 90) {
        tick();
        my $v = chr(65 + $round % 26);
        $c->set('c', $v) or $bad //= "round $round: set failed";
        ($c->get('c') // '') eq $v or $bad //= "round $round: get failed";
        $c->remove('c') or $bad //= "round $round: remove failed";
    }
    ok(!defined $bad, '90 rounds of set/get/remove of another key') or diag($bad);
    ok(($c->get('A') // '') eq $a, 'first large value survived the churn');
    ok(($c->get('B') // '') eq $b, 'second large value survived the churn');
}

# ------------------------------------------------ interleaved removes/overwrites
{
    srand(777);
    # one 64k page, 300 keys of at most ~80 bytes: live data always stays far
    # below the 60% eviction threshold, so the cache must agree exactly with a
    # plain hash while slots get deleted, reused and the page reorganised.
    my $c = FMTest::new_cache(num_pages => 1, page_size => 65536, serializer => '');
    my %model;
    my $bad;
    for my $op (1 .. 30000) {
        my $k = 'key' . int(rand(300));
        my $r = rand();
        if ($r < 0.45) {
            my $v = rstr(0, 50);
            $c->set($k, $v) == 1 or $bad //= "op $op: set($k) failed";
            $model{$k} = $v;
        }
        elsif ($r < 0.75) {
            my $did = $c->remove($k);
            $did == (exists $model{$k} ? 1 : 0) or $bad //= "op $op: remove($k) returned $did";
            delete $model{$k};
        }
        else {
            my $got = $c->get($k);
            my $want = $model{$k};
            (defined $got ? "=$got" : 'undef') eq (defined $want ? "=$want" : 'undef')
                or $bad //= "op $op: get($k) gave " . ($got // 'undef') . ", want " . ($want // 'undef');
        }
        if ($op % 2500 == 0) {
            for my $i (0 .. 299) {
                my ($got, $want) = ($c->get("key$i"), $model{"key$i"});
                (defined $got ? "=$got" : 'undef') eq (defined $want ? "=$want" : 'undef')
                    or $bad //= "op $op: full check key$i";
            }
        }
    }
    ok(!defined $bad, '30000 random set/remove/get ops agree with a model') or diag($bad);
    my %got = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is_deeply(\%got, \%model, 'get_keys(2) matches the model at the end');
}

Cache::FastMmap::_set_time_override();
done_testing;
