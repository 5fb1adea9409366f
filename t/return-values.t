# Return values of every method in scalar and list context, get_keys quirks
# and the expiry sentinels of set (SPEC 1.3, 1.5, risks 2, 5 and 12).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

sub locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) ? 1 : 0 }

# ---------------------------------------------------------------------- set
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 4096, serializer => '');
    my @r = $c->set('a', 1);
    is_deeply(\@r, [1], 'set returns 1 (one element in list context)');
    is(scalar($c->set('big', 'x' x 10000)), 0, 'set that cannot store returns 0');
    $c->remove('t', { modseq => 5 });
    @r = $c->set('t', 'v');
    is_deeply(\@r, [0], 'set refused by a tombstone returns 0, not -1');
}

# -------------------------------------------------------------- get_and_set
{
    my $c = FMTest::new_cache();
    $c->set('cnt', 5);
    my $s = $c->get_and_set('cnt', sub { $_[1] + 1 });
    is($s, 6, 'get_and_set in scalar context returns the new value');
    my @l = $c->get_and_set('cnt', sub { $_[1] + 1 });
    is_deeply(\@l, [ 7, 1 ], 'in list context: (new value, 1)');

    @l = $c->get_and_set('cnt', sub { () });
    is_deeply(\@l, [ 7, 0 ], 'empty-list callback: (current value, 0)');
    is(scalar($c->get_and_set('cnt', sub { () })), 7, '... scalar context: the current value');
    @l = $c->get_and_set('nokey', sub { () });
    is_deeply(\@l, [ undef, 0 ], 'empty list on a missing key: (undef, 0)');
    is($c->exists('nokey'), 0, '... nothing stored');

    my $r = FMTest::new_cache(serializer => '');
    $r->set('cnt', 5);
    my @args;
    @l = $r->get_and_set('cnt', sub { @args = @_; () });
    is_deeply(\@args, [ 'cnt', '5', { expire_on => 0 } ], "callback receives ('cnt', '5', {expire_on => 0})");
    is_deeply(\@l, [ '5', 0 ], "... empty list gives ('5', 0)");
    @l = $r->get_and_set('cnt', sub { $_[1] + 1 });
    is_deeply(\@l, [ 6, 1 ], "sub { \$_[1]+1 } gives (6, 1)");

    $r->set('e', 'x', { expire_on => $T0 + 100 });
    $r->get_and_set('e', sub { @args = @_; () });
    is_deeply($args[2], { expire_on => $T0 + 100 }, 'callback options carry expire_on');
    $r->get_and_set('none', sub { @args = @_; () });
    is_deeply(\@args, [ 'none', undef, {} ], 'missing key: (key, undef, {})');

    $r->get_and_set('opt', sub { ('v', { expire_on => $T0 + 7 }) });
    my ($rec) = grep { $_->{key} eq 'opt' } $r->get_keys(1);
    is($rec->{expire_on}, $T0 + 7, 'callback options hash is applied to the store');
    @l = $r->get_and_set('opt', sub { ('w', undef) });
    is_deeply(\@l, [ 'w', 1 ], 'undef options are accepted');
    is(locked($r), 0, 'page unlocked after get_and_set');

    my $small = FMTest::new_cache(num_pages => 1, page_size => 4096, serializer => '');
    @l = $small->get_and_set('huge', sub { 'z' x 10000 });
    is_deeply(\@l, [ 'z' x 10000, 0 ], 'a store that fails: (value, 0)');
}

# ------------------------------------------------------------ get_and_remove
{
    my $c = FMTest::new_cache();
    $c->set('k', 'x');
    my @l = $c->get_and_remove('k');
    is_deeply(\@l, [ 'x', 1 ], "get_and_remove: ('x', 1)");
    @l = $c->get_and_remove('k');
    is_deeply(\@l, [ undef, 0 ], '... then (undef, 0)');
    $c->set('k', 'y');
    is(scalar($c->get_and_remove('k')), 'y', 'scalar context: the value');
    is(scalar($c->get_and_remove('k')), undef, '... undef when absent');
}

# ------------------------------------------------ get, exists, remove, expire
{
    my $c = FMTest::new_cache();
    $c->set('k', 'v');
    my @l = $c->get('k');
    is_deeply(\@l, ['v'], 'get returns one scalar in list context');
    @l = $c->get('absent');
    is_deeply(\@l, [undef], '... a miss gives (undef)');
    is_deeply([ $c->exists('k') ], [1], 'exists: 1');
    is_deeply([ $c->exists('absent') ], [0], 'exists: 0');
    is_deeply([ $c->expire('k') ], [1], 'expire: 1');
    is_deeply([ $c->expire('k') ], [0], 'expire again: 0');
    $c->set('k', 'v');
    is_deeply([ $c->remove('k') ], [1], 'remove: 1');
    is_deeply([ $c->remove('k') ], [0], 'remove again: 0');
}

# --------------------------------------------------------------- multi_set
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 4096, serializer => '');
    is_deeply([ $c->multi_set('p', { a => 1, b => 2 }) ], [1], 'multi_set returns 1');
    is($c->multi_set('p', { huge => 'x' x 10000 }), 1, '... even when a store fails');
    is_deeply($c->multi_get('p', [qw(a b huge zz)]), { a => 1, b => 2 }, 'multi_get: found keys only');
}

# ----------------------------------------------------------- get_statistics
{
    my $c = FMTest::new_cache(enable_stats => 1, num_pages => 3, page_size => 8192);
    $c->set("k$_", $_) for 1 .. 5;
    $c->get('absent');
    $c->get("k$_") for 1 .. 5;
    $c->exists('k1');
    my @l = $c->get_statistics;
    is_deeply(\@l, [ 7, 6 ], 'get_statistics: (reads, hits); misses count as reads, exists counts');
    is(scalar($c->get_statistics), 6, '... scalar context: the last element (hits)');
    @l = $c->get_statistics(1);
    is_deeply(\@l, [ 7, 6 ], 'get_statistics(1) returns the counts');
    @l = $c->get_statistics;
    is_deeply(\@l, [ 0, 0 ], '... and clears them');

    my $off = FMTest::new_cache();
    $off->set('a', 1);
    $off->get('a');
    is_deeply([ $off->get_statistics ], [ 0, 0 ], 'without enable_stats nothing is counted');
}

# ----------------------------------------------------------------- get_keys
{
    my $raw = FMTest::new_cache(serializer => '');
    my $sto = FMTest::new_cache();
    for my $c ($raw, $sto) {
        $c->set("key$_", "val$_") for 1 .. 6;
    }

    # XS path: scalar context gives the last element
    for my $case ([ raw => $raw, 0 ], [ raw => $raw, 1 ], [ raw => $raw, 2 ],
                  [ storable => $sto, 0 ], [ storable => $sto, 1 ]) {
        my ($name, $c, $mode) = @$case;
        my @l = $c->get_keys($mode);
        my $s = $c->get_keys($mode);
        is(scalar @l, 6, "$name get_keys($mode) lists 6 entries");
        if ($mode == 0) {
            is($s, $l[-1], "$name get_keys(0) in scalar context: the last key");
        } else {
            is(ref $s, 'HASH', "$name get_keys($mode) in scalar context: a hashref");
            is($s->{key}, $l[-1]{key}, '... the last one');
        }
    }
    # deserializing path: scalar context gives the count
    is(scalar($sto->get_keys(2)), 6, 'storable get_keys(2) in scalar context: the count');
    is(scalar($sto->get_keys(3)), 6, 'get_keys(3) in scalar context: the count');
    is(scalar($raw->get_keys(3)), 6, 'raw get_keys(3) also goes the deserializing way (count)');

    for my $c ($raw, $sto) {
        my %two = map { $_->{key} => $_ } $c->get_keys(2);
        for my $mode (3, 4, 99) {
            my %m = map { $_->{key} => $_ } $c->get_keys($mode);
            is_deeply(\%m, \%two, "get_keys($mode) is the same as get_keys(2)");
        }
        is($two{key3}{value}, 'val3', 'get_keys(2) values are deserialized');
        is_deeply([ sort keys %{ $two{key3} } ], [qw(expire_on flags key last_access value)],
            'get_keys(2) hash keys');
        my @neg = $c->get_keys(-1);
        is(scalar @neg, 0, 'a negative mode returns an empty list');
        is(scalar($c->get_keys(-5)), undef, '... undef in scalar context');
        my @z = $c->get_keys;
        is_deeply([ sort @z ], [ sort $c->get_keys(0) ], 'no mode means mode 0');
    }
    my $empty = FMTest::new_cache();
    is(scalar($empty->get_keys(0)), undef, 'empty cache: get_keys(0) in scalar context is undef');
    is(scalar($empty->get_keys(2)), 0, 'empty cache: deserializing get_keys(2) in scalar context is 0');
}

# flags leak FC_UTF8VAL and FC_UNDEF in modes 1 and 2; UTF-8 key with an
# undef value loses its flag
{
    my $c = FMTest::new_cache(serializer => '');
    my $wide = "\x{263a}";
    $c->set('utf8val', "a$wide");
    $c->set('undefval', undef);
    $c->set('plain', 'x');
    $c->set("k$wide", 'defined');
    $c->set("u$wide", undef);
    for my $mode (1, 2) {
        my %r = map { $_->{key} => $_ } $c->get_keys($mode);
        is($r{utf8val}{flags}, 0x80000000, "mode $mode: a UTF-8 value leaks 0x80000000 into flags");
        is($r{undefval}{flags}, 0x20000000, "mode $mode: an undef value leaks 0x20000000");
        is($r{plain}{flags}, 0, "mode $mode: a plain value has flags 0");
        ok(exists $r{"k$wide"}, "mode $mode: a UTF-8 key with a defined value keeps its flag");
        is($r{"k$wide"}{flags}, 0, '... and the key flag does not leak');
        my $bytes = "u$wide";
        utf8::encode($bytes);
        ok(exists $r{$bytes}, "mode $mode: a UTF-8 key with an undef value comes back as bytes");
        ok(!utf8::is_utf8((grep { $_ eq $bytes } keys %r)[0]), '... without the UTF-8 flag');
        if ($mode == 2) {
            is($r{utf8val}{value}, "a$wide", 'mode 2: the value keeps its UTF-8 flag');
            is($r{undefval}{value}, undef, 'mode 2: the undef value is undef');
        }
    }
    my @k = $c->get_keys(0);
    my ($kw) = grep { $_ eq "k$wide" } @k;
    ok($kw && utf8::is_utf8($kw), 'mode 0: the UTF-8 key has the flag');
    my $bytes = "u$wide";
    utf8::encode($bytes);
    is(scalar(grep { $_ eq $bytes && !utf8::is_utf8($_) } @k), 1, 'mode 0: the undef-valued one comes back as bytes');
    is($c->get("u$wide"), undef, 'get with the wide key finds the undef entry');
    ok($c->exists("u$wide"), '... it exists');
}

# ---------------------------------------------------------- expiry sentinels
{
    my $c = FMTest::new_cache(serializer => '');
    for my $arg (0, '', -1, 'garbage', { expire_time => 0 }, 'now', { expire_time => 'now' }) {
        my $name = ref $arg ? '{expire_time => ' . $arg->{expire_time} . '}' : "'$arg'";
        my $key = "s-$name";
        is($c->set($key, 'v', $arg), 1, "set(\$k, \$v, $name) returns 1");
        is($c->get($key), undef, '... but the entry is already expired');
        is($c->exists($key), 0, '... exists says 0');
        is($c->remove($key), 1, '... it was stored (plain remove finds it)');
    }
    for my $arg (undef, { expire_on => 0 }, 'never', { expire_time => 'never' }, {}) {
        my $name = !defined $arg ? 'undef' : ref $arg ? join(',', %$arg) || '{}' : "'$arg'";
        my $key = "n-$name";
        is($c->set($key, 'v', $arg), 1, "set with $name returns 1");
        Cache::FastMmap::_set_time_override($T0 + 10 * 365 * 86400);
        is($c->get($key), 'v', '... never expires without a default expire_time');
        Cache::FastMmap::_set_time_override($T0);
    }

    my $d = FMTest::new_cache(serializer => '', expire_time => 60);
    $d->set('undef-arg', 'v', undef);
    $d->set('no-arg', 'v');
    $d->set('never', 'v', 'never');
    $d->set('rel', 'v', '2m');
    $d->set('abs', 'v', { expire_on => $T0 + 5 });
    $d->set('min1', 'v', '1 minute');
    $d->set('frac', 'v', '1.5h');
    my %e = map { $_->{key} => $_->{expire_on} } $d->get_keys(1);
    is($e{'undef-arg'}, $T0 + 60, 'an undef expiry argument means the cache default');
    is($e{'no-arg'}, $T0 + 60, 'no expiry argument means the cache default');
    is($e{never}, 0, "'never' means never, even with a default");
    is($e{rel}, $T0 + 120, "'2m' is two minutes");
    is($e{abs}, $T0 + 5, 'expire_on is absolute');
    is($e{min1}, $T0 + 60, "'1 minute' is 60 s");
    is($e{frac}, $T0 + 1, "'1.5h' is 1 s (numeric prefix only)");
    Cache::FastMmap::_set_time_override($T0 + 60);
    is($d->get('no-arg'), undef, 'expiry is inclusive (now >= expire_on)');
    Cache::FastMmap::_set_time_override($T0 + 59);
    is($d->get('no-arg'), 'v', '... one second before, still there');
    Cache::FastMmap::_set_time_override($T0);

    my $now = FMTest::new_cache(serializer => '', expire_time => 'now');
    is($now->{expire_time}, 1, "constructor expire_time 'now' means 1 second");
}

# ------------------- upstream's internal lock-passing options are ignored
# Upstream's get($k, {skip_unlock => 1}) returned with the page still locked
# and set($k, $v, {_locked => 1}) wrote without locking; both are internal
# there.  Here a lock never outlives the call that took it, so both options
# are ignored: the calls behave as the plain ones.
{
    my $c = FMTest::new_cache(serializer => '');
    $c->set('k', 'v', { expire_on => $T0 + 50 });
    my @r = $c->get('k', { skip_unlock => 1 });
    is(locked($c), 0, 'get(skip_unlock) leaves nothing locked');
    is_deeply(\@r, ['v'], '... and returns just the value');
    is($c->set('k', 'w', { _locked => 1 }), 1, 'set(_locked) stores');
    is(locked($c), 0, '... and leaves nothing locked');
    is($c->get('k'), 'w', '... the value is there');
    is($c->remove('k', { _locked => 1 }), 1, 'remove(_locked) removes');
    is(locked($c), 0, '... and leaves nothing locked');
}

done_testing;
