#!perl
# Serializer modules and plumbing (SPEC 1.1 `serializer`/`raw_values`,
# 1.4, 5.11): sereal, json (utf8 + allow_nonref), storable, custom
# [ $ser, $deser ] pairs, the deprecated raw_values mapping, the exact die
# messages for unknown and unloadable serializers, and value round trips
# (references, nested structures, undef, UTF-8 and binary strings) through
# every serializer.
#
# Sereal and JSON are optional: their subtests skip when the modules are
# missing, except under FASTMMAP_CI where a missing module is a failure.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Scalar::Util qw(blessed);

# ------------------------------------------------------------------ helpers

# need_modules(@modules): true when all load; otherwise skips the current
# subtest (or fails it under FASTMMAP_CI).
sub need_modules { FMTest::need_modules(@_) }

sub geometry { (num_pages => 3, page_size => 65536) }

# A second object on the same file with no serializer: shows the bytes
# that were really stored.
sub raw_view {
    my ($c) = @_;
    return Cache::FastMmap->new(share_file => $c->{share_file}, init_file => 0,
        geometry(), serializer => '', unlink_on_exit => 0);
}

sub is_locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) }

# Values every serializer must give back unchanged (is_deeply).
my %common_values = (
    'plain string'     => 'hello world',
    'empty string'     => '',
    'zero'             => 0,
    'integer'          => 42,
    'negative float'   => -3.25,
    'undef'            => undef,
    'array ref'        => [1, 'two', 3],
    'hash ref'         => { a => 1, b => 'x' },
    'nested'           => { list => [1, [2, [3, { deep => 'yes' }]]], h => { k => [undef, ''] } },
    'empty containers' => [ [], {} ],
    'wide string'      => "smile \x{263A} and \x{1F600}",
    'latin-1 string'   => "caf\x{e9}",
    'utf8 in nested'   => { "cl\x{e9}" => ["\x{263A}", "\x{100}x"] },
    'long string'      => 'abc' x 5000,
);
# Values only binary-safe, ref-preserving serializers (storable, sereal,
# storable-based custom pairs) must keep.
my %rich_values = (
    'binary bytes'   => join('', map { chr } 0 .. 255),
    'scalar ref'     => \'inner',
    'ref to ref'     => \\'deeper',
    'undef in ref'   => \undef,
    'blessed object' => bless({ id => 7, tags => ['a'] }, 'Some::Class'),
);

# Round-trip every value through set/get, multi_set/multi_get, get_keys(2)
# and get_and_set on a cache built with %opts.
sub round_trips {
    my ($label, $values, %opts) = @_;
    my $c = FMTest::new_cache(geometry(), %opts);
    for my $name (sort keys %$values) {
        my $v = $values->{$name};
        is($c->set("k:$name", $v), 1, "$label: set $name");
        my $got = $c->get("k:$name");
        is_deeply($got, $v, "$label: get gives back $name");
        if (blessed $v) {
            is(blessed($got), blessed($v), "$label: $name keeps its class");
        }
    }
    ok(!is_locked($c), "$label: no page left locked");

    # undef stored is found (a key), though get returns undef
    my %keys = map { $_ => 1 } $c->get_keys(0);
    ok($keys{'k:undef'}, "$label: a stored undef is still a key");

    my %by_key = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is_deeply($by_key{"k:$_"}, $values->{$_}, "$label: get_keys(2) value of $_")
        for sort keys %$values;

    my %kv = map { ("m:$_" => $values->{$_}) } keys %$values;
    is($c->multi_set('page', \%kv), 1, "$label: multi_set");
    is_deeply($c->multi_get('page', [sort keys %kv]), \%kv, "$label: multi_get gives every value back");

    $c->set('counter', { n => 1, list => ["\x{263A}"] });
    my $seen;
    my @r = $c->get_and_set('counter', sub {
        $seen = $_[1];
        return ({ n => $_[1]{n} + 1, list => [ @{ $_[1]{list} }, 'x' ] });
    });
    is_deeply($seen, { n => 1, list => ["\x{263A}"] }, "$label: get_and_set callback sees the deserialized value");
    is_deeply(\@r, [ { n => 2, list => ["\x{263A}", 'x'] }, 1 ], "$label: get_and_set returns (new value, 1)");
    is_deeply($c->get('counter'), { n => 2, list => ["\x{263A}", 'x'] }, "$label: get_and_set stored the new value");
    return $c;
}

# Run new(%opts) in a child process where every module file whose @INC
# name matches $block fails to load (an @INC hook that dies); returns the
# constructor's die message ('LIVED' if it did not die).
sub new_error_with_blocked {
    my ($block, %opts) = @_;
    my ($msg, $st) = FMTest::new_error_with_blocked($block, geometry(), %opts);
    is($st, 0, "child for blocked $block exited cleanly") or diag FMTest::describe_status($st);
    return $msg;
}

# ------------------------------------------------------------------ storable

subtest 'storable (default and explicit)' => sub {
    for my $opts ([], [serializer => 'storable'], [serializer => undef]) {
        my $label = @$opts ? "serializer => " . ($opts->[1] // 'undef') : 'default';
        my $c = FMTest::new_cache(geometry(), @$opts);
        is($c->{serialize}, Storable->can('freeze'), "$label: serialize is Storable::freeze");
        is($c->{deserialize}, Storable->can('thaw'), "$label: deserialize is Storable::thaw");
        $c->set('k', [1, 2]);
        my $raw = raw_view($c)->get('k');
        is_deeply(Storable::thaw($raw), \[1, 2], "$label: stored bytes are freeze() of a reference to the value");
    }
    round_trips('storable', { %common_values, %rich_values });
};

# ------------------------------------------------------------------ sereal

subtest 'sereal' => sub {
    need_modules('Sereal::Encoder', 'Sereal::Decoder') or return;
    my $c = round_trips('sereal', { %common_values, %rich_values }, serializer => 'sereal');
    ok(ref($c->{serialize}) eq 'CODE' && ref($c->{deserialize}) eq 'CODE', 'sereal: code refs installed');

    # The encoder is handed a reference to the value (the upstream plumbing),
    # so the stored document decodes to a scalar ref.
    $c->set('doc', { a => [1] });
    my $raw = raw_view($c)->get('doc');
    ok(Sereal::Decoder::looks_like_sereal($raw), 'sereal: stored bytes are a Sereal document');
    my $decoded = Sereal::Decoder->new->decode($raw);
    is(ref $decoded, 'REF', 'sereal: the document holds a reference to the value');
    is_deeply($$decoded, { a => [1] }, 'sereal: ... which is the stored structure');
    $c->set('str', 'plain');
    $decoded = Sereal::Decoder->new->decode(raw_view($c)->get('str'));
    is(ref $decoded, 'SCALAR', 'sereal: a plain string is encoded as a scalar ref');
    is($$decoded, 'plain', 'sereal: ... to that string');

    # The serializer closures follow the same convention when called directly.
    my $bytes = $c->{serialize}->(\'direct');
    is(${ $c->{deserialize}->($bytes) }, 'direct', 'sereal: deserialize returns a scalar ref');
};

# ------------------------------------------------------------------ json

subtest 'json' => sub {
    need_modules('JSON') or return;
    my $c = round_trips('json', \%common_values, serializer => 'json');

    # utf8 + allow_nonref: a bare string is a JSON string of UTF-8 bytes.
    $c->set('wide', "\x{263A}");
    my $raw = raw_view($c)->get('wide');
    is($raw, qq{"\xe2\x98\xba"}, 'json: bare string stored as a UTF-8 encoded JSON string');
    ok(!utf8::is_utf8($raw), 'json: stored document is bytes');
    $c->set('num', 17);
    is(raw_view($c)->get('num'), '17', 'json: a number is stored as a JSON number');
    $c->set('undef', undef);
    is(raw_view($c)->get('undef'), 'null', 'json: undef is stored as null');
    $c->set('struct', { a => [1, undef] });
    is_deeply(JSON->new->utf8->decode(raw_view($c)->get('struct')), { a => [1, undef] },
        'json: a structure is stored as its JSON text (not a reference to it)');
    is($c->{serialize}->(\'x'), '"x"', 'json: serialize takes a scalar ref and encodes its target');
    is(ref $c->{deserialize}->('[1]'), 'REF', 'json: deserialize returns a reference');
    is(${ $c->{deserialize}->('"y"') }, 'y', 'json: ... to the decoded value');

    # A value holding a scalar ref cannot be encoded; the error is JSON's own
    # and the page is not left locked; the previous value is untouched.
    $c->set('key', 'before');
    ok(!eval { $c->set('key', { key2 => \'bar' }); 1 }, 'json: storing a scalar ref dies');
    like($@, qr/cannot encode reference to scalar/, 'json: ... with the JSON module error');
    ok(!is_locked($c), 'json: page unlocked after the serializer died');
    is($c->get('key'), 'before', 'json: previous value kept');
    is($c->set('key', 'after'), 1, 'json: the next set works');
    is($c->get('key'), 'after', 'json: ... and is stored');

    # Objects and scalar refs are not JSON; JSON dies for them at set time.
    ok(!eval { $c->set('obj', bless {}, 'Some::Class'); 1 }, 'json: a blessed object cannot be stored');
    ok(!is_locked($c), 'json: page unlocked after that failure too');
};

# ------------------------------------------------------------------ custom pairs

subtest 'custom serializer pair' => sub {
    require Storable;
    my (@ser_refs, @deser_args);
    my $ser = sub { push @ser_refs, ref $_[0]; Storable::nfreeze($_[0]) };
    my $deser = sub { push @deser_args, $_[0]; Storable::thaw($_[0]) };
    my $c = round_trips('custom storable pair', { %common_values, %rich_values },
        serializer => [ $ser, $deser ]);
    is($c->{serialize}, $ser, 'custom: serialize is the given code ref');
    is($c->{deserialize}, $deser, 'custom: deserialize is the given code ref');

    @ser_refs = ();
    $c->set('s', 'string');
    $c->set('u', undef);
    $c->set('a', [1]);
    is_deeply(\@ser_refs, ['SCALAR', 'SCALAR', 'REF'],
        'custom: the serializer always receives a reference to the value (SCALAR for plain values and undef)');

    @deser_args = ();
    my $raw = raw_view($c)->get('a');
    is($c->get('a')->[0], 1, 'custom: get works');
    is_deeply(\@deser_args, [$raw], 'custom: the deserializer receives exactly the stored bytes');

    # A tagging pair: proves the bytes that reach the file are the
    # serializer's output and nothing else.
    my $tag = FMTest::new_cache(geometry(), serializer => [
        sub { 'TAG[' . (defined ${ $_[0] } ? ${ $_[0] } : '~') . ']' },
        sub { my ($s) = $_[0] =~ /\ATAG\[(.*)\]\z/s; my $v = $s eq '~' ? undef : $s; \$v },
    ]);
    $tag->set('x', 'value');
    is(raw_view($tag)->get('x'), 'TAG[value]', 'custom: stored bytes are the serializer output');
    is($tag->get('x'), 'value', 'custom: get dereferences the deserializer result');
    $tag->set('y', undef);
    is(raw_view($tag)->get('y'), 'TAG[~]', 'custom: undef is passed to the serializer too');
    ok(!defined $tag->get('y'), 'custom: ... and comes back undef');

    # A deserializer that does not return a scalar ref breaks get; the page
    # is released all the same.
    my $bad = FMTest::new_cache(geometry(), serializer => [ sub { ${ $_[0] } }, sub { $_[0] } ]);
    $bad->set('k', 'v');
    ok(!eval { $bad->get('k'); 1 }, 'custom: a deserializer returning a plain string makes get die');
    ok(!is_locked($bad), 'custom: ... without leaving the page locked');
    is($bad->set('k2', 'w'), 1, 'custom: the cache still works afterwards');
};

# ------------------------------------------------------------------ raw and raw_values

subtest 'raw mode and the deprecated raw_values' => sub {
    my @cases = (
        [ 'raw_values => 1',                          [raw_values => 1],                      'raw' ],
        [ 'raw_values => 1, serializer => undef',     [raw_values => 1, serializer => undef], 'raw' ],
        [ "raw_values => 'yes'",                      [raw_values => 'yes'],                  'raw' ],
        [ 'raw_values => 0',                          [raw_values => 0],                      'storable' ],
        [ "raw_values => ''",                         [raw_values => ''],                     'storable' ],
        [ "raw_values => 1, serializer => 'storable'", [raw_values => 1, serializer => 'storable'], 'storable' ],
        [ "raw_values => 0, serializer => ''",        [raw_values => 0, serializer => ''],    'raw' ],
        [ "raw_values => 0, serializer => 0",         [raw_values => 0, serializer => 0],     'raw' ],
        [ 'raw_values => 1, serializer => [pair]',
          [raw_values => 1, serializer => [ sub { 'C' . ${ $_[0] } }, sub { my $v = substr($_[0], 1); \$v } ]], 'custom' ],
    );
    for my $case (@cases) {
        my ($label, $opts, $want) = @$case;
        my $c = FMTest::new_cache(geometry(), @$opts);
        $c->set('k', 'v');
        my $raw = raw_view($c)->get('k');
        if ($want eq 'raw') {
            ok(!exists $c->{serialize} && !exists $c->{deserialize}, "$label: no serializer installed");
            is($raw, 'v', "$label: value stored as is");
        }
        elsif ($want eq 'storable') {
            is($c->{serialize}, Storable->can('freeze'), "$label: storable selected");
            is(${ Storable::thaw($raw) }, 'v', "$label: value stored frozen");
        }
        else {
            is($raw, 'Cv', "$label: the custom pair is used");
        }
        is($c->get('k'), 'v', "$label: get gives the value back");
    }

    # raw round trips: strings keep their bytes and UTF-8 flag, numbers are
    # stringified, undef stays distinct from ''.
    my $c = FMTest::new_cache(geometry(), serializer => '');
    my %raw = (
        plain  => 'text', empty => '', wide => "\x{263A}x", latin1 => "caf\x{e9}",
        binary => join('', map { chr } reverse 0 .. 255), long => "\0\xff" x 4000,
    );
    for my $name (sort keys %raw) {
        $c->set($name, $raw{$name});
        my $got = $c->get($name);
        is($got, $raw{$name}, "raw: $name round-trips");
        is(!!utf8::is_utf8($got), !!utf8::is_utf8($raw{$name}), "raw: $name keeps its UTF-8 flag");
    }
    my $up = "caf\x{e9}";
    utf8::upgrade($up);
    $c->set('upgraded', $up);
    ok(utf8::is_utf8($c->get('upgraded')), 'raw: an upgraded latin-1 string comes back upgraded');
    is($c->get('upgraded'), "caf\x{e9}", 'raw: ... and equal');
    $c->set('num', 1.5);
    is($c->get('num'), '1.5', 'raw: numbers are stored as their string form');
    $c->set('undef', undef);
    ok(!defined $c->get('undef'), 'raw: undef comes back undef');
    $c->set('empty', '');
    ok(defined $c->get('empty'), "raw: '' comes back defined");
};

# ------------------------------------------------------------------ errors

subtest 'unknown serializer names' => sub {
    for my $name ('x', 'Storable', 'STORABLE', 'yaml', 'sereal ', 'json1', '1') {
        ok(!eval { FMTest::new_cache(geometry(), serializer => $name); 1 }, "serializer '$name' dies");
        like($@, qr/\A\QUnrecognized value >$name< for `serializer` parameter\E at /,
            "... with the exact upstream message for '$name'");
    }
};

subtest 'unloadable serializer modules' => sub {
    # [ serializer, blocked file, package in the message, modules the
    #   serializer loads before the blocked one ]
    my @cases = (
        [ 'storable', qr{\AStorable\.pm\z},         'Storable' ],
        [ 'sereal',   qr{\ASereal/Encoder\.pm\z},   'Sereal' ],
        [ 'sereal',   qr{\ASereal/Decoder\.pm\z},   'Sereal', 'Sereal::Encoder' ],
        [ 'json',     qr{\AJSON\.pm\z},             'JSON' ],
    );
    for my $case (@cases) {
        my ($name, $block, $pkg, @before) = @$case;
        my $msg = new_error_with_blocked($block, serializer => $name);
        my ($absent) = grep { !eval "require $_; 1" } @before;
        if (defined $absent && !$ENV{FASTMMAP_CI}) {
            # Without the module loaded first, the load stops there: then
            # the message must name that module's own load failure.
            (my $file = "$absent.pm") =~ s{::}{/}g;
            like($msg, qr/\A\QCould not load serialization package: $pkg : \E.*\Q$file\E/s,
                "serializer '$name' without $absent installed dies naming $file");
            next;
        }
        like($msg, qr/\A\QCould not load serialization package: $pkg : \E.*simulated load failure/s,
            "serializer '$name' with $block unloadable dies with the upstream message");
    }
    # The default serializer is storable, so the same message appears
    # without any serializer option.
    my $msg = new_error_with_blocked(qr{\AStorable\.pm\z});
    like($msg, qr/\A\QCould not load serialization package: Storable : \E/,
        'default (storable) with Storable unloadable dies the same way');
    # Raw mode loads nothing, so it works without Storable.
    $msg = new_error_with_blocked(qr{\AStorable\.pm\z}, serializer => '');
    is($msg, 'LIVED', "serializer => '' does not need Storable");
};

done_testing;
