#!perl
# The everyday API (SPEC 1.5, 5.12): get/set/remove/exists/expire/clear/
# purge/empty, return values in scalar and list context, get_and_set,
# get_and_remove, multi_get/multi_set, get_keys modes and quirks,
# get_statistics.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

# ------------------------------------------------------ get/set/remove
{
    my $c = FMTest::new_cache(num_pages => 7, page_size => 16384);
    is($c->get('nope'), undef, 'get of a missing key: undef');
    my @l = $c->get('nope');
    is(scalar(@l), 1, 'get of a missing key in list context: one element');
    ok(!defined $l[0], '... which is undef');

    my $r = $c->set('a', 'apple');
    is($r, 1, 'set returns 1');
    is($c->get('a'), 'apple', 'get returns the value');
    @l = $c->get('a');
    is_deeply(\@l, ['apple'], 'get in list context: one-element list');
    is($c->set('a', 'avocado'), 1, 'overwrite returns 1');
    is($c->get('a'), 'avocado', 'overwritten value read back');

    for my $i (1 .. 300) { $c->set("key$i", "val$i") }
    is(scalar(grep { ($c->get("key$_") // '') eq "val$_" } 1 .. 300), 300,
       '300 keys across 7 pages read back');

    is($c->remove('a'), 1, 'remove of a present key returns 1');
    is($c->get('a'), undef, '... key gone');
    is($c->remove('a'), 0, 'remove of a missing key returns 0');
    my @rl = $c->remove('key1');
    is_deeply(\@rl, [1], 'remove in list context: (1)');

    is($c->expire('key2'), 1, 'expire of a live key returns 1');
    is($c->get('key2'), undef, '... key gone');
    is($c->expire('key2'), 0, 'expire of a missing key returns 0');

    # numbers and the empty string as keys and values
    $c->set(0, 0);
    is($c->get(0), 0, 'key 0 / value 0');
    $c->set('', 'empty key');
    is($c->get(''), 'empty key', 'empty-string key');
    $c->set('ev', '');
    ok(defined $c->get('ev') && $c->get('ev') eq '', "value '' comes back defined and empty");
    $c->set(1.5, 2.25);
    is($c->get('1.5'), 2.25, 'numeric key stringified');

    # clear removes everything
    $c->clear;
    is(scalar(my @k = $c->get_keys(0)), 0, 'clear leaves no keys');
    is($c->get('key3'), undef, 'clear removed key3');
    ok($c->set('after', 'clear'), 'set after clear works');
    is($c->get('after'), 'clear', 'get after clear works');

    # purge keeps live entries
    $c->purge;
    is($c->get('after'), 'clear', 'purge keeps unexpired entries');
    # empty removes everything
    $c->set("e$_", $_) for 1 .. 20;
    $c->empty;
    is(scalar(my @k2 = $c->get_keys(0)), 0, 'empty() leaves no keys');
}

# exists (1.59+)
eval {
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '');
    ok(Cache::FastMmap->can('exists'), 'exists method present');
    is($c->exists('x'), 0, 'exists on a missing key: 0');
    $c->set('x', 'y');
    is($c->exists('x'), 1, 'exists on a present key: 1');
    $c->set('u', undef);
    is($c->exists('u'), 1, 'exists on a key holding undef: 1');
    $c->remove('x');
    is($c->exists('x'), 0, 'exists after remove: 0');
    1;
} or fail("exists: $@");

# ------------------------------------------------------ get_and_set
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    my @args;
    my $v = $c->get_and_set('cnt', sub { @args = @_; return; });
    is($v, undef, 'empty-list callback on a missing key: scalar undef');
    is($args[0], 'cnt', 'callback gets the key');
    ok(!defined $args[1], 'callback gets undef for a missing key');
    is(ref($args[2]), 'HASH', 'callback gets an options hash');
    ok(!exists $args[2]{expire_on}, '... without expire_on for a missing key');
    my @r = $c->get_and_set('cnt', sub { return });
    is_deeply(\@r, [undef, 0], 'empty-list callback, list context: (undef, 0)');
    is($c->get('cnt'), undef, 'nothing stored');

    $c->set('cnt', 5);
    @r = $c->get_and_set('cnt', sub { @args = @_; return });
    is_deeply(\@r, ['5', 0], 'empty-list callback on key=5: (5, 0)');
    is_deeply(\@args, ['cnt', '5', { expire_on => 0 }], "callback receives ('cnt', 5, {expire_on => 0})");
    @r = $c->get_and_set('cnt', sub { $_[1] + 1 });
    is_deeply(\@r, [6, 1], 'increment in list context: (6, 1)');
    $v = $c->get_and_set('cnt', sub { $_[1] + 1 });
    is($v, 7, 'increment in scalar context: 7');
    is($c->get('cnt'), 7, 'stored value is 7');

    # options hash returned by the callback
    @r = $c->get_and_set('ttl', sub { ('t', { expire_time => 10 }) });
    is_deeply(\@r, ['t', 1], 'callback with options: (value, 1)');
    my ($e) = grep { $_->{key} eq 'ttl' } $c->get_keys(1);
    is($e->{expire_on}, $T0 + 10, 'callback expire_time option applied');
    $c->get_and_set('ttl', sub { ($_[1] . 'x', { expire_on => $_[2]{expire_on} }) });
    ($e) = grep { $_->{key} eq 'ttl' } $c->get_keys(1);
    is($e->{expire_on}, $T0 + 10, 'passing back expire_on keeps the expiry');
    is($c->get('ttl'), 'tx', 'value updated');

    # bad options croak (1.62+) and leave the page unlocked
    my $ok = eval { $c->get_and_set('cnt', sub { (8, 'not a hash') }); 1 };
    ok(!$ok, 'non-hash options from the callback die');
    like($@, qr/get_and_set callback options must be a hash reference/, '... with the documented message');
    $ok = eval { $c->get_and_set('cnt', sub { (8, [1]) }); 1 };
    like($ok ? '' : $@, qr/get_and_set callback options must be a hash reference/, 'array ref options die too');
    is($c->get('cnt'), 7, 'value unchanged after the bad-options die');
    ok(!Cache::FastMmap::fc_is_locked($c->{Cache}), 'not locked after the die');
    is($c->set('cnt', 9), 1, 'set on the same key works afterwards');

    # get_and_set returns a copy, and the stored value round-trips
    @r = $c->get_and_set('ref', sub { [1, 2, 3] });
    is_deeply($r[0], [1, 2, 3], 'get_and_set with a ref value');
    is_deeply($c->get('ref'), [1, 2, 3], 'ref value stored');
}

# ------------------------------------------------------ get_and_remove
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    $c->set('gr', 'x');
    my @r = $c->get_and_remove('gr');
    is_deeply(\@r, ['x', 1], "get_and_remove list context: ('x', 1)");
    @r = $c->get_and_remove('gr');
    is_deeply(\@r, [undef, 0], 'then (undef, 0)');
    $c->set('gr', 'y');
    is(scalar($c->get_and_remove('gr')), 'y', 'scalar context: the value');
    is($c->get('gr'), undef, 'removed');
    is(scalar($c->get_and_remove('gr')), undef, 'scalar context on a missing key: undef');
}

# ------------------------------------------------------ multi_get/multi_set
{
    my $c = FMTest::new_cache(num_pages => 5, page_size => 8192);
    my $r = $c->multi_set('page', { a => 1, b => [2], c => { three => 3 } });
    is($r, 1, 'multi_set returns 1');
    is_deeply($c->multi_get('page', [qw(a b c d)]),
              { a => 1, b => [2], c => { three => 3 } }, 'multi_get returns found keys only');
    is_deeply($c->multi_get('page', [qw(x y)]), {}, 'multi_get with no hits: empty hash');
    is_deeply($c->multi_get('other', [qw(a b)]), {}, 'another page key does not see them');
    my %k = map { $_ => 1 } $c->get_keys(0);
    ok($k{'page-a'} && $k{'page-b'} && $k{'page-c'}, 'multi_set stores combined "page-key" keys');
    $c->multi_set('page', { a => 'one' });
    is_deeply($c->multi_get('page', ['a', 'b']), { a => 'one', b => [2] }, 'multi_set overwrites');
    # a huge value in multi_set is ignored, the call still returns 1
    is($c->multi_set('page', { big => 'x' x 100_000, small => 's' }), 1,
       'multi_set returns 1 even when a value does not fit');
    is_deeply($c->multi_get('page', ['small']), { small => 's' }, 'the other value was stored');
}

# ------------------------------------------------------ get_keys
{
    my $c = FMTest::new_cache(num_pages => 5, page_size => 8192, serializer => '');
    my %want = map { ("k$_" => "v$_") } 1 .. 50;
    $c->set($_, $want{$_}) for keys %want;
    my @k0 = $c->get_keys;
    is_deeply([sort @k0], [sort keys %want], 'get_keys() = get_keys(0): every key once');
    is_deeply([sort($c->get_keys(0))], [sort keys %want], 'get_keys(0)');
    my @k1 = $c->get_keys(1);
    is(scalar(@k1), 50, 'get_keys(1): 50 entries');
    is_deeply([sort keys %{ $k1[0] }], [qw(expire_on flags key last_access)],
              'get_keys(1) hash keys: key last_access expire_on flags');
    is_deeply([sort map { $_->{key} } @k1], [sort keys %want], 'get_keys(1) keys');
    ok(!grep({ $_->{last_access} != $T0 || $_->{expire_on} != 0 || $_->{flags} != 0 } @k1),
       'get_keys(1): last_access, expire_on, flags as stored');
    my @k2 = $c->get_keys(2);
    is_deeply([sort keys %{ $k2[0] }], [qw(expire_on flags key last_access value)],
              'get_keys(2) hash keys add value');
    is_deeply({ map { $_->{key} => $_->{value} } @k2 }, \%want, 'get_keys(2) values');
    # scalar context of the raw path: the last element
    my $last = $c->get_keys(0);
    is($last, $k0[-1], 'get_keys(0) in scalar context: the last key');
    my $last1 = $c->get_keys(1);
    is(ref($last1), 'HASH', 'get_keys(1) in scalar context: a hashref (the last one)');
    is($last1->{key}, $k1[-1]{key}, '... the last one');
    is(scalar(my @neg = $c->get_keys(-1)), 0, 'negative mode: empty list');

    # removed and expired entries are hidden
    $c->remove('k1');
    $c->set('k2', 'v2', 0);
    my %k = map { $_ => 1 } $c->get_keys(0);
    ok(!$k{k1} && !$k{k2} && $k{k3}, 'removed and expired entries not listed');

    # flag quirks: UTF8VAL (0x80000000) and UNDEF (0x20000000) leak, UTF8KEY does not
    $c->clear;
    $c->set('plain', 'p');
    $c->set('wide', "\x{263A}");
    $c->set('und', undef);
    $c->set("k\x{263A}", 'x');
    my %f = map { $_->{key} => $_->{flags} } $c->get_keys(1);
    is($f{plain}, 0, 'plain entry flags 0');
    is($f{wide}, 0x80000000, 'UTF-8 value leaks 0x80000000 into flags');
    is($f{und}, 0x20000000, 'undef value leaks 0x20000000 into flags');
    is($f{"k\x{263A}"}, 0, 'UTF-8 key flag is stripped');
    my %f2 = map { $_->{key} => $_->{flags} } $c->get_keys(2);
    is_deeply(\%f2, \%f, 'get_keys(2) reports the same flags');
    my %v2 = map { $_->{key} => $_->{value} } $c->get_keys(2);
    ok(exists $v2{und} && !defined $v2{und}, 'get_keys(2): undef value is undef');
    is($v2{wide}, "\x{263A}", 'get_keys(2): UTF-8 value');
    ok(utf8::is_utf8($v2{wide}), '... with the UTF-8 flag');
}

# get_keys on a storable cache: mode 2 deserializes, scalar context is a count
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    $c->set('h', { a => 1 });
    $c->set('s', 'str');
    $c->set('u', undef);
    my %v = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is_deeply(\%v, { h => { a => 1 }, s => 'str', u => undef }, 'get_keys(2) deserializes values');
    my $n = $c->get_keys(2);
    is($n, 3, 'deserializing get_keys(2) in scalar context: the count');
    my %v3 = map { $_->{key} => $_->{value} } $c->get_keys(3);
    is_deeply(\%v3, \%v, 'mode 3 behaves like mode 2');
    my @k1 = $c->get_keys(1);
    ok(!grep({ exists $_->{value} } @k1), 'mode 1 has no values');
}

# dirty flag visible in get_keys for write_back entries
{
    my @wb;
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => '',
                              write_action => 'write_back', write_cb => sub { push @wb, [@_[1, 2]] });
    $c->set('d', 'dirty');
    $c->multi_set('m', { c => 'clean' });
    my %f = map { $_->{key} => $_->{flags} } $c->get_keys(1);
    is($f{d}, 1, 'write_back set: FC_ISDIRTY visible in flags');
    is($f{'m-c'}, 0, 'multi_set values are clean');
    $c->empty;
    is_deeply(\@wb, [['d', 'dirty']], 'empty() wrote back only the dirty entry');
}

# ------------------------------------------------------ get_statistics
{
    my $c = FMTest::new_cache(num_pages => 7, page_size => 8192, enable_stats => 1);
    my @s = $c->get_statistics;
    is_deeply(\@s, [0, 0], 'fresh cache: (0, 0)');
    $c->get('missing');
    $c->set('hit', 'me');
    $c->get('hit') for 1 .. 101;
    @s = $c->get_statistics;
    is_deeply(\@s, [102, 101], '1 miss + 101 hits: (102, 101)');
    @s = $c->get_statistics(1);
    is_deeply(\@s, [102, 101], 'get_statistics(1) returns the values ...');
    @s = $c->get_statistics;
    is_deeply(\@s, [0, 0], '... and clears them');
    $c->set("x$_", $_) for 1 .. 20;
    $c->get("x$_") for 1 .. 20;
    $c->get("y$_") for 1 .. 5;
    is_deeply([$c->get_statistics], [25, 20], 'stats summed over pages');
    my $last = $c->get_statistics;
    is($last, 20, 'scalar context: the last element');
}
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    $c->set('a', 1);
    $c->get('a') for 1 .. 5;
    $c->get('b');
    is_deeply([$c->get_statistics], [0, 0], 'without enable_stats nothing is counted');
}

Cache::FastMmap::_set_time_override();
done_testing;
