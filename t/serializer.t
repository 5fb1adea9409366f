#!perl
# Serializer plumbing (SPEC 1.4, 5.11): raw mode (serializer => ''),
# the default storable, custom [ser, deser] pairs, copies not originals.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Scalar::Util qw(refaddr);

# ------------------------------------------------------------ default: storable
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 16384);
    ok($c->{serialize} && $c->{deserialize}, 'default cache has a serializer');
    my $data = { list => [1, 2, { deep => 'x' }], str => "caf\x{e9}", num => 3.25,
                 undef => undef, wide => "\x{263A}" };
    is($c->set('h', $data), 1, 'set a nested structure');
    my $got = $c->get('h');
    is_deeply($got, $data, 'nested structure round-trips');
    isnt(refaddr($got), refaddr($data), 'get returns a copy, not the original');
    $data->{list}[0] = 'changed';
    is($c->get('h')->{list}[0], 1, 'changing the original after set does not change the cache');
    $got->{str} = 'changed';
    is($c->get('h')->{str}, "caf\x{e9}", 'changing a fetched copy does not change the cache');
    isnt(refaddr($c->get('h')), refaddr($c->get('h')), 'two gets give two distinct copies');

    for my $v ('plain', '', 0, undef, [], {}, \'scalar ref', \\'ref ref', [undef]) {
        my $d = !defined $v ? 'undef' : ref $v ? ref($v) . ' ref' : "'$v'";
        $c->set('v', $v);
        is_deeply($c->get('v'), $v, "storable round-trip of $d");
    }
    $c->set('obj', bless({ a => 1 }, 'Some::Class'));
    my $o = $c->get('obj');
    isa_ok($o, 'Some::Class', 'blessed object comes back blessed');

    # multi_set / multi_get / get_and_set go through the serializer too
    $c->multi_set('p', { x => [1], y => { z => 2 } });
    is_deeply($c->multi_get('p', [qw(x y)]), { x => [1], y => { z => 2 } }, 'multi_get deserializes');
    my $seen;
    $c->set('gs', [5]);
    my $new = $c->get_and_set('gs', sub { $seen = $_[1]; [ $_[1][0] + 1 ] });
    is_deeply($seen, [5], 'get_and_set callback gets the deserialized value');
    is_deeply($new, [6], 'get_and_set returns the new value');
    is_deeply($c->get('gs'), [6], 'and stores it serialized');

    # read_cb results are returned as copies (serialize -> deserialize)
    my $orig = { from => 'read_cb' };
    my $rc = FMTest::new_cache(num_pages => 3, page_size => 8192, read_cb => sub { $orig });
    my $r1 = $rc->get('miss');
    is_deeply($r1, $orig, 'read_cb value returned');
    isnt(refaddr($r1), refaddr($orig), 'read_cb value is returned as a copy');
    is_deeply($rc->get('miss'), $orig, 'read_cb value was cached');
}

# serializer => 'storable' explicitly behaves the same
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => 'storable');
    $c->set('a', [1, { b => 2 }]);
    is_deeply($c->get('a'), [1, { b => 2 }], "serializer => 'storable'");
}

# ------------------------------------------------------------ raw
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '');
    ok(!$c->{serialize}, "serializer '' sets no serializer");
    $c->set('s', 'string');
    is($c->get('s'), 'string', 'raw string');
    $c->set('n', 3.5);
    is($c->get('n'), '3.5', 'raw number stringified');
    my $ref = [1, 2];
    $c->set('r', $ref);
    my $g = $c->get('r');
    ok(!ref($g), 'raw mode stores a reference as its string form');
    is($g, "$ref", '... exactly that string');
    # raw bytes are stored as-is: a frozen structure is just bytes to the cache
    require Storable;
    my $frozen = Storable::nfreeze({ a => 1 });
    $c->set('f', $frozen);
    is($c->get('f'), $frozen, 'raw mode keeps arbitrary bytes');
    $c->set('u', undef);
    ok(!defined $c->get('u'), 'raw undef is undef');
    $c->set('e', '');
    ok(defined $c->get('e'), "raw '' is defined");
    # get_keys(2) on a raw cache gives stored bytes
    my %v = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is($v{f}, $frozen, 'get_keys(2) raw value');
}
for my $false (0, '0') {
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => $false);
    $c->set('r', [1]);
    ok(!ref($c->get('r')), "serializer => '$false' means raw");
}
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, raw_values => 1);
    $c->set('r', [1]);
    ok(!ref($c->get('r')), 'deprecated raw_values => 1 means raw');
    my $c2 = FMTest::new_cache(num_pages => 1, page_size => 8192, raw_values => 1, serializer => 'storable');
    $c2->set('r', [1]);
    is_deeply($c2->get('r'), [1], 'an explicit serializer wins over raw_values');
}

# ------------------------------------------------------------ custom pair
{
    my (@ser_args, @deser_args);
    my $ser = sub { push @ser_args, $_[0]; 'S:' . join(',', @{ ${ $_[0] } }) };
    my $deser = sub { push @deser_args, $_[0]; my @a = split /,/, substr($_[0], 2); \[@a] };
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => [$ser, $deser]);
    $c->set('k', [1, 2, 3]);
    is(ref($ser_args[0]), 'REF', 'custom serializer receives a reference to the value');
    my $got = $c->get('k');
    is_deeply($got, [1, 2, 3], 'custom pair round-trips');
    is($deser_args[0], 'S:1,2,3', 'custom deserializer receives the stored bytes');
    my %v = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is_deeply($v{k}, [1, 2, 3], 'get_keys(2) uses the custom deserializer');
}

# ------------------------------------------------------------ errors
{
    my $ok = eval { FMTest::new_cache(serializer => 'nonesuch'); 1 };
    ok(!$ok, 'unknown serializer dies');
    like($@, qr/Unrecognized value >nonesuch< for `serializer` parameter/, '... with the upstream message');
    $ok = eval { FMTest::new_cache(share_file => \'x'); 1 };
    ok(!$ok, 'reference share_file dies');
    like($@, qr/share_file argument was a reference/, '... with the upstream message');
}

# A deserializer that dies: the error propagates and the page is unlocked.
{
    my $die = 0;
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192,
        serializer => [ sub { ${ $_[0] } }, sub { die "deser boom\n" if $die; \"$_[0]" } ]);
    $c->set('k', 'v');
    $die = 1;
    ok(!eval { $c->get('k'); 1 }, 'dying deserializer: get dies');
    is($@, "deser boom\n", '... with the deserializer error');
    ok(!Cache::FastMmap::fc_is_locked($c->{Cache}), 'page not left locked');
    $die = 0;
    is($c->get('k'), 'v', 'next get works');
}

done_testing;
