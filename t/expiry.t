#!perl
# Expiry (SPEC 1.3, 2.11, 5.2): parse_expire_time, per-call expiry forms and
# their sentinels, the constructor default, inclusive expiry, and what
# expired entries look like to the other methods. Time is driven through the
# process-global hook Cache::FastMmap::_set_time_override.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
sub at { Cache::FastMmap::_set_time_override($_[0]) }

# ------------------------------------------------------- parse_expire_time
my @pe = (
    ['10', 10], ['10s', 10], ['10S', 10], ['1m', 60], ['1M', 60], ['1h', 3600],
    ['3H', 10800], ['1d', 86400], ['2D', 172800], ['1w', 604800],
    ['1W', 604800], ['1 minute', 60], ['2 hours', 7200], ['1.5h', 1],
    ['5x', 5], ['garbage', 0], [' 5m', 0], ['-5', 0], ['s', 0], ['', 0],
    ['0', 0], [0, 0], ['never', 0], ['now', 1], ['90m', 5400], ['007', 7],
);
for (@pe) {
    my ($in, $out) = @$_;
    is(Cache::FastMmap::parse_expire_time($in), $out, "parse_expire_time('$in') = $out");
}
is(Cache::FastMmap::parse_expire_time(undef), 0, 'parse_expire_time(undef) = 0');
is(Cache::FastMmap::parse_expire_time(), 0, 'parse_expire_time() = 0');

my @peb = (['never', 0], ['now', 1000], ['10', 1010], ['1h', 4600],
           ['garbage', 1000], ['', 1000], [0, 1000], ['1m', 1060]);
for (@peb) {
    my ($in, $out) = @$_;
    is(Cache::FastMmap::parse_expire_time($in, 1000), $out, "parse_expire_time('$in', 1000) = $out");
}
is(Cache::FastMmap::parse_expire_time(undef, 1000), 1000, 'parse_expire_time(undef, 1000) = 1000');

# --------------------------------------------------------------- helpers
sub expire_on_of {
    my ($c, $k) = @_;
    my ($e) = grep { $_->{key} eq $k } $c->get_keys(1);
    return $e ? $e->{expire_on} : undef;
}

# ------------------------------------------------------- per-call expiry
{
    at($T0);
    my $c = FMTest::new_cache(serializer => '', num_pages => 5, page_size => 8192);

    is($c->set('bare', 'v', 10), 1, 'set with bare scalar expiry returns 1');
    is(expire_on_of($c, 'bare'), $T0 + 10, 'bare scalar 10: expire_on = now+10');
    is($c->set('bare2', 'v', '2m'), 1, "set with bare '2m'");
    is(expire_on_of($c, 'bare2'), $T0 + 120, "bare '2m': expire_on = now+120");
    is($c->set('et', 'v', { expire_time => '10s' }), 1, 'set with {expire_time}');
    is(expire_on_of($c, 'et'), $T0 + 10, '{expire_time => 10s}: expire_on = now+10');
    is($c->set('eo', 'v', { expire_on => $T0 + 5 }), 1, 'set with {expire_on}');
    is(expire_on_of($c, 'eo'), $T0 + 5, '{expire_on} stored as given');
    $c->set('both', 'v', { expire_on => $T0 + 7, expire_time => 100 });
    is(expire_on_of($c, 'both'), $T0 + 7, 'expire_on wins over expire_time');
    $c->set('never1', 'v', { expire_time => 'never' });
    is(expire_on_of($c, 'never1'), 0, "{expire_time => 'never'}: never");
    $c->set('never2', 'v', 'never');
    is(expire_on_of($c, 'never2'), 0, "bare 'never': never");
    $c->set('never3', 'v', { expire_on => 0 });
    is(expire_on_of($c, 'never3'), 0, '{expire_on => 0}: never');
    $c->set('dflt1', 'v', undef);
    is(expire_on_of($c, 'dflt1'), 0, 'undef third argument: cache default (never here)');
    $c->set('dflt2', 'v');
    is(expire_on_of($c, 'dflt2'), 0, 'no third argument: cache default (never here)');

    # just before expiry: all present
    at($T0 + 4);
    is($c->get($_), 'v', "$_ readable before expiry") for qw(bare et eo both);
    at($T0 + 5);
    is($c->get('eo'), undef, 'expire_on reached: miss (inclusive)');
    is($c->get('bare'), 'v', 'bare 10 still there at +5');
    at($T0 + 9);
    is($c->get('bare'), 'v', 'bare 10 still readable at +9');
    at($T0 + 10);
    is($c->get('bare'), undef, 'bare 10 expired at exactly +10 (inclusive)');
    is($c->get('et'), undef, 'expire_time 10s expired at +10');
    is($c->get('bare2'), 'v', "'2m' still there at +10");
    at($T0 + 120);
    is($c->get('bare2'), undef, "'2m' expired at +120");
    at($T0 + 10_000_000);
    is($c->get($_), 'v', "$_ never expires") for qw(never1 never2 never3 dflt1 dflt2);
}

# ------------------------------------------ sentinels: "expire now", returns 1
{
    at($T0);
    my $c = FMTest::new_cache(serializer => '', num_pages => 3, page_size => 8192,
                              expire_time => '1h');
    my @forms = (
        [ 'zero',       0 ],
        [ 'empty',      '' ],
        [ 'minus1',     -1 ],
        [ 'garbage',    'garbage' ],
        [ 'now',        'now' ],
        [ 'h_et0',      { expire_time => 0 } ],
        [ 'h_etempty',  { expire_time => '' } ],
        [ 'h_etnow',    { expire_time => 'now' } ],
        [ 'h_eonow',    { expire_on => $T0 } ],
        [ 'h_eopast',   { expire_on => $T0 - 100 } ],
    );
    for (@forms) {
        my ($k, $arg) = @$_;
        is($c->set($k, 'v', $arg), 1, "set($k) with an expire-now form returns 1");
        is($c->get($k), undef, "$k: already expired, get misses");
    }
    my %keys = map { $_ => 1 } $c->get_keys(0);
    ok(!grep({ $keys{$_->[0]} } @forms), 'expired entries hidden from get_keys');
    # expired entries are not deleted by get: a plain remove still finds them
    is($c->remove('zero'), 1, 'plain remove of an expired entry returns 1');
    is($c->remove('zero'), 0, '... and it is gone afterwards');
    is($c->expire('empty'), 0, 'expire() of an already-expired entry returns 0');
    is($c->remove('empty'), 1, '... and leaves it in place for remove');
    # purge removes the rest of them
    $c->set('live', 'v');
    $c->purge;
    is($c->remove('garbage'), 0, 'purge removed the expired entries');
    is($c->get('live'), 'v', 'purge kept the live entry');

    # undef / {expire_on => undef} mean the cache default: now + 1h
    $c->set('d1', 'v', undef);
    $c->set('d2', 'v', { expire_on => undef });
    $c->set('d3', 'v', { expire_time => undef });
    $c->set('d4', 'v', {});
    is(expire_on_of($c, $_), $T0 + 3600, "$_: cache default expiry") for qw(d1 d2 d3 d4);
    $c->set('n0', 'v', { expire_on => 0 });
    is(expire_on_of($c, 'n0'), 0, '{expire_on => 0} overrides the cache default: never');
    $c->set('p30', 'v', 30);
    is(expire_on_of($c, 'p30'), $T0 + 30, 'per-call expiry overrides the cache default');
    at($T0 + 3599);
    is($c->get('d1'), 'v', 'default-expiry entry readable at +3599');
    at($T0 + 3600);
    is($c->get($_), undef, "$_ expired at +3600") for qw(d1 d2 d3 d4);
    is($c->get('n0'), 'v', '{expire_on => 0} entry survives the default');
}

# ------------------------------------------------ constructor expire_time
for ([ '1m', 60 ], [ 60, 60 ], [ '2h', 7200 ], [ 'now', 1 ], [ 'never', 0 ],
     [ '1.5h', 1 ], [ 0, 0 ]) {
    my ($spec, $secs) = @$_;
    at($T0);
    my $c = FMTest::new_cache(serializer => '', num_pages => 1, page_size => 8192,
                              expire_time => $spec);
    is($c->{expire_time}, $secs, "expire_time => '$spec' parsed to $secs");
    $c->set('k', 'v');
    is(expire_on_of($c, 'k'), $secs ? $T0 + $secs : 0, "expire_time => '$spec': expire_on");
    if ($secs) {
        at($T0 + $secs - 1);
        is($c->get('k'), 'v', "expire_time => '$spec': readable one second early");
        at($T0 + $secs);
        is($c->get('k'), undef, "expire_time => '$spec': expired at +$secs");
    }
    else {
        at($T0 + 50_000_000);
        is($c->get('k'), 'v', "expire_time => '$spec': never expires");
    }
}

# ------------------------------------- other methods with expiry / time
{
    at($T0);
    my $c = FMTest::new_cache(serializer => '', num_pages => 3, page_size => 8192);
    $c->multi_set('pk', { a => 1, b => 2 }, 10);
    is(expire_on_of($c, 'pk-a'), $T0 + 10, 'multi_set bare expiry like set');
    $c->multi_set('pk2', { a => 1 }, { expire_on => $T0 + 3 });
    is(expire_on_of($c, 'pk2-a'), $T0 + 3, 'multi_set {expire_on}');
    at($T0 + 10);
    is_deeply($c->multi_get('pk', [qw(a b)]), {}, 'multi_get misses expired entries');

    # last_access: set on write and on a hit, not by get_keys or by a miss
    at($T0 + 100);
    $c->set('la', 'v');
    my ($e) = grep { $_->{key} eq 'la' } $c->get_keys(1);
    is($e->{last_access}, $T0 + 100, 'last_access = time of the set');
    at($T0 + 105);
    ($e) = grep { $_->{key} eq 'la' } $c->get_keys(2);
    is($e->{last_access}, $T0 + 100, 'get_keys does not touch last_access');
    $c->get('la');
    ($e) = grep { $_->{key} eq 'la' } $c->get_keys(1);
    is($e->{last_access}, $T0 + 105, 'a get hit touches last_access');
    $c->set('lx', 'v', 1);
    at($T0 + 200);
    $c->get('lx');
    is($c->remove('lx'), 1, 'expired entry still present after a get miss');

    # empty(1) removes only expired entries; empty() everything
    $c->set('e1', 'v', 5);
    $c->set('e2', 'v');
    at($T0 + 205);
    $c->empty(1);
    is($c->remove('e1'), 0, 'empty(1) removed the expired entry');
    is($c->get('e2'), 'v', 'empty(1) kept the live entry');
    $c->empty;
    is($c->get('e2'), undef, 'empty() removed everything');

    # expire(): removes a live entry and reports it
    $c->set('x', 'v');
    is($c->expire('x'), 1, 'expire() of a live entry returns 1');
    is($c->get('x'), undef, '... and removes it');
    is($c->expire('x'), 0, 'expire() of a missing entry returns 0');
}

# exists() reports expired entries as absent (1.59+)
eval {
    at($T0);
    my $c = FMTest::new_cache(serializer => '', num_pages => 1, page_size => 8192);
    $c->set('k', 'v', 10);
    is($c->exists('k'), 1, 'exists before expiry');
    at($T0 + 10);
    is($c->exists('k'), 0, 'exists at expiry: 0 (inclusive)');
    1;
} or fail("exists: $@");

# Turning the override off brings back the real clock.
{
    Cache::FastMmap::_set_time_override();
    my $c = FMTest::new_cache(serializer => '', num_pages => 1, page_size => 8192);
    my $before = time;
    $c->set('k', 'v', 100);
    my $after = time;
    my $eo = expire_on_of($c, 'k');
    ok($eo >= $before + 100 && $eo <= $after + 100, 'override off: real clock used')
        or diag("expire_on $eo, time $before..$after");
    is($c->get('k'), 'v', 'readable with the real clock');
}

done_testing;
