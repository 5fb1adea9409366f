#!perl
# $cache->stats (issue 14): a hashref of counters kept in the share file,
# cumulative and shared by every process, always on.
#
#  1. The keys, the geometry and a fresh file's zeros.
#  2. entries / used_bytes follow sets and removes; reads / hits count
#     lock-free hits, misses and locked reads (enable_stats off and on).
#  3. evictions: a full one-page cache evicting LRU entries; clear() counts as
#     neither eviction nor expiration; expirations from purge.
#  4. Across processes: children's reads, hits and evictions add up in the
#     parent's view once they have closed their objects; a forked child never
#     adds counts it inherited unflushed.
#  5. repairs: a page damaged under the cache is repaired on use and counted.
#  6. stats inside a get_and_set callback (a page lock held) works.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my @KEYS = qw(entries capacity_bytes used_bytes evictions expirations repairs
              reads hits num_pages page_size);

# ---- 1
{
    my $c = FMTest::new_cache(init_file => 1, num_pages => 5, page_size => 8192);
    my $s = $c->stats;
    is(ref $s, 'HASH', 'stats returns a hashref');
    ok(exists $s->{$_}, "key $_") for @KEYS;
    is($s->{capacity_bytes}, 5 * 8192, 'capacity_bytes = num_pages * page_size');
    is($s->{num_pages}, 5, 'num_pages');
    is($s->{$_}, 0, "fresh file: $_ is 0") for qw(entries evictions expirations repairs reads hits);
    cmp_ok($s->{used_bytes}, '>', 0, 'page headers and slot tables count as used');
    cmp_ok($s->{used_bytes}, '<', 5 * 1024, '... and nothing else yet');
    eval { $c->stats(1) };
    like($@, qr/stats takes no arguments/, 'an argument is refused');
}

# ---- 2
for my $es (0, 1) {
    my $c = FMTest::new_cache(init_file => 1, num_pages => 7, page_size => 65536,
                              enable_stats => $es);
    my $used0 = $c->stats->{used_bytes};
    $c->set("k$_", 'x' x 100) for 1 .. 50;
    my $s = $c->stats;
    is($s->{entries}, 50, "enable_stats=$es: 50 entries after 50 sets");
    cmp_ok($s->{used_bytes} - $used0, '>=', 50 * 100, 'used_bytes grew by at least the values');
    is($s->{reads}, 0, 'sets are not reads');
    is($c->get("k$_"), 'x' x 100, "hit k$_") for 1 .. 3;      # lock-free (or locked) hits
    is($c->get("none$_"), undef, "miss none$_") for 1 .. 2;
    ok($c->exists('k4'), 'exists');
    $s = $c->stats;
    is($s->{reads}, 6, 'reads: 3 gets that hit, 2 that missed, 1 exists');
    is($s->{hits}, 4, 'hits: the 3 gets and the exists');
    $c->remove("k$_") for 1 .. 10;
    is($c->stats->{entries}, 40, 'removes free their slots');
    # Enough reads to cross several flush batches, checked exactly.
    $c->get('k20') for 1 .. 200;
    $s = $c->stats;
    is($s->{reads}, 206, 'reads across batches');
    is($s->{hits}, 204, 'hits across batches');
}

# ---- 3
{
    my $t = FMTest::T0;
    Cache::FastMmap::_set_time_override($t);
    my $c = FMTest::new_cache(init_file => 1, num_pages => 1, page_size => 8192);
    $c->set("e$_", 'v' x 60) for 1 .. 300;
    my $s = $c->stats;
    cmp_ok($s->{evictions}, '>', 0, 'a full page evicts');
    is($s->{evictions} + $s->{entries}, 300, 'every set is either still there or evicted');
    is($s->{expirations}, 0, 'nothing expired');
    my $ev = $s->{evictions};
    $c->clear;
    $s = $c->stats;
    is($s->{entries}, 0, 'clear empties');
    is($s->{evictions}, $ev, 'clear adds no evictions');
    is($s->{expirations}, 0, '... and no expirations');
    $c->set("x$_", 'v', { expire_on => $t + 5 }) for 1 .. 10;
    $c->set("y$_", 'v') for 1 .. 3;
    Cache::FastMmap::_set_time_override($t + 10);
    $c->purge;
    $s = $c->stats;
    is($s->{expirations}, 10, 'purge counts the 10 expired entries');
    is($s->{entries}, 3, 'and keeps the rest');
    is($s->{evictions}, $ev, 'purge evicts nothing');
    Cache::FastMmap::_set_time_override(0);
}

# ---- 4
{
    my $file = FMTest::share_file('procs');
    my %o = (share_file => $file, num_pages => 3, page_size => 8192);
    my $c = Cache::FastMmap->new(%o, init_file => 1);
    $c->set("p$_", "v$_") for 1 .. 20;
    my @pids = map {
        my $n = $_;
        FMTest::fork_child(60, sub {
            my $cc = Cache::FastMmap->new(%o);
            my $bad = 0;
            for my $i (1 .. 20) { $bad++ unless ($cc->get("p$i") // '') eq "v$i" }
            $cc->get("absent$n") for 1 .. 5;
            undef $cc;        # closing adds this object's counts to the file
            return $bad ? 1 : 0;
        });
    } 1 .. 3;
    my $st = FMTest::wait_children(90, @pids);
    is(FMTest::describe_status($st->{$_}), 'exit 0', "reader child $_") for @pids;
    my $s = $c->stats;
    is($s->{reads}, 3 * 25, 'the children\'s reads reach the parent');
    is($s->{hits}, 3 * 20, 'and their hits');

    # A child forked with counts pending in the parent's object drops them.
    my $before = $c->stats->{reads};
    $c->get('p1') for 1 .. 10;      # pending in this object, not yet in the file
    my $rc = FMTest::run_in_child(30, sub { $c->get('p2'); $c->stats; return 0 });
    is(FMTest::describe_status($rc), 'exit 0', 'child using the inherited object');
    is($c->stats->{reads} - $before, 10 + 1,
       'the parent\'s 10 pending reads are counted once, plus the child\'s own');
}

# ---- 5
{
    my $file = FMTest::share_file('repair');
    my $c = Cache::FastMmap->new(share_file => $file, init_file => 1,
                                 num_pages => 1, page_size => 8192);
    $c->set("r$_", 'v') for 1 .. 5;
    is($c->stats->{repairs}, 0, 'no repairs yet');
    # Scribble over the page header's slot count.
    open(my $fh, '+<', $file) or die "open $file: $!";
    binmode $fh;
    sysseek($fh, FMTest::page_off(8192, 0) + 4, 0) or die;
    syswrite($fh, "\xFF\xFF\xFF\xFF") == 4 or die;
    close $fh;
    my @w;
    {
        local $SIG{__WARN__} = sub { push @w, @_ };
        $c->get('r1');
    }
    like("@w", qr/reinitialised/, 'the damaged page is repaired on use');
    is($c->stats->{repairs}, 1, 'and counted in the file');
    my $other = Cache::FastMmap->new(share_file => $file, num_pages => 1, page_size => 8192);
    is($other->stats->{repairs}, 1, 'another object sees the same count');
}

# ---- 6
{
    my $c = FMTest::new_cache(init_file => 1, num_pages => 3, page_size => 8192);
    $c->set(a => 1);
    my $inside;
    $c->get_and_set(a => sub { $inside = $c->stats; return 2 });
    is(ref $inside, 'HASH', 'stats inside a get_and_set callback');
    is($inside->{entries}, 1, '... sees the entry');
    is($c->get('a'), 2, 'and the callback still stores');
}

done_testing;
