#!perl
# Key identity and value bytes (SPEC 1.4, 2.5, 5.4): UTF-8 and binary keys
# and values, upgraded vs downgraded strings, wide strings vs their UTF-8
# bytes, the UTF-8 flag round trip, NUL bytes, undef vs '', reference keys.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

for my $ser ('', 'storable') {
    my $c = FMTest::new_cache(num_pages => 5, page_size => 16384, serializer => $ser);
    my $t = "serializer '$ser'";

    # upgraded and downgraded copies of the same string are different keys
    my $down = "caf\xe9";
    my $up = $down;
    utf8::upgrade($up);
    ok($up eq $down && utf8::is_utf8($up) && !utf8::is_utf8($down), "$t: test strings set up");
    $c->set($down, 'latin1 key');
    $c->set($up, 'upgraded key');
    is($c->get($down), 'latin1 key', "$t: downgraded key has its own entry");
    is($c->get($up), 'upgraded key', "$t: upgraded key has its own entry");
    my $up_bytes = "caf\xc3\xa9";
    is($c->get($up_bytes), 'upgraded key', "$t: upgraded key == its UTF-8 bytes");
    $c->remove($down);
    is($c->get($up), 'upgraded key', "$t: removing the downgraded key leaves the upgraded one");

    # a wide string and its UTF-8 byte string are the same key
    my $wide = "k\x{263A}";
    my $bytes = "k\xe2\x98\xba";
    $c->set($wide, 'smiley');
    is($c->get($bytes), 'smiley', "$t: wide key found through its UTF-8 bytes");
    $c->set($bytes, 'bytes');
    is($c->get($wide), 'bytes', "$t: byte-string set overwrote the wide key's entry");
    is($c->remove($wide), 1, "$t: remove via the wide form");
    is($c->get($bytes), undef, "$t: ... removed for the byte form too");

    # values: UTF-8 flag and bytes round trip
    my %vals = (
        wide   => "\x{263A} smile \x{1F600}",
        latin1 => "caf\xe9",
        binary => join('', map { chr } 0 .. 255),
        nul    => "a\0b\0\0c",
        empty  => '',
        ascii  => 'plain',
        upgr   => do { my $x = "na\xefve"; utf8::upgrade($x); $x },
    );
    $c->set("v_$_", $vals{$_}) for keys %vals;
    for my $k (sort keys %vals) {
        my $got = $c->get("v_$k");
        ok(defined $got && $got eq $vals{$k}, "$t: value '$k' round-trips");
        is(!!utf8::is_utf8($got), !!utf8::is_utf8($vals{$k}), "$t: value '$k' UTF-8 flag round-trips")
            if defined $got;
    }
    my $got = $c->get('v_binary');
    is(length($got), 256, "$t: binary value length");

    # NUL bytes in keys are significant
    $c->set("a\0b", 'ab');
    $c->set("a\0c", 'ac');
    $c->set("a", 'a');
    is($c->get("a\0b"), 'ab', "$t: key with NUL (1)");
    is($c->get("a\0c"), 'ac', "$t: key with NUL (2)");
    is($c->get("a"), 'a', "$t: prefix key distinct");
    is($c->get("a\0"), undef, "$t: truncated key not found");
    my $bk = join '', map { chr } reverse 0 .. 255;
    $c->set($bk, 'binary key');
    is($c->get($bk), 'binary key', "$t: all-bytes key");

    # keys come back from get_keys with their UTF-8 flag
    my ($wk) = grep { $_ eq "w\x{263A}" } do { $c->set("w\x{263A}", 1); $c->get_keys(0) };
    ok(defined $wk && utf8::is_utf8($wk), "$t: get_keys returns a UTF-8 key flagged");
    my ($lk) = grep { $_ eq "l\xe9" } do { $c->set("l\xe9", 1); $c->get_keys(0) };
    ok(defined $lk && !utf8::is_utf8($lk), "$t: get_keys returns a latin-1 key unflagged");

    # undef is distinct from ''
    $c->set('undef', undef);
    $c->set('empty', '');
    ok(!defined $c->get('undef'), "$t: undef value reads back undef");
    my $e = $c->get('empty');
    ok(defined $e && $e eq '', "$t: '' reads back as defined ''");
    my %keys = map { $_ => 1 } $c->get_keys(0);
    ok($keys{undef}, "$t: a key holding undef is present");
    is($c->remove('undef'), 1, "$t: ... and removable");

    # reference keys are stringified
    my $ref = [1, 2];
    $c->set($ref, 'by ref');
    is($c->get("$ref"), 'by ref', "$t: reference key matches its string form");
    my $h = {};
    $c->set("$h", 'by string');
    is($c->get($h), 'by string', "$t: string form matches the reference key");

    # numbers as values
    $c->set('num', 42.5);
    is($c->get('num'), 42.5, "$t: number value");
}

# Raw mode only: a UTF-8 key with an undef value loses its key flag in
# get_keys (upstream quirk: FC_UTF8KEY is recorded only for defined values)
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => '');
    $c->set("u\x{263A}", undef);
    my @k = $c->get_keys(0);
    is(scalar(@k), 1, 'one key');
    is($k[0], "u\xe2\x98\xba", 'UTF-8 key with undef value comes back as raw UTF-8 bytes');
    ok(!utf8::is_utf8($k[0]), '... without the UTF-8 flag');
    ok(!defined $c->get("u\x{263A}"), 'and get finds it (undef)');
    is($c->remove("u\x{263A}"), 1, 'and remove finds it');
}

# Oversized values are refused, the old value kept (1.61+); nothing crashes
{
    my $c = FMTest::new_cache(num_pages => 2, page_size => 8192, serializer => '');
    $c->set('k', 'small');
    is($c->set('k', 'x' x 9000), 0, 'value bigger than a page: set returns 0');
    is($c->get('k'), 'small', 'old value kept');
    is($c->set("k\x{263A}", "\x{263A}" x 4000), 0, 'wide value bigger than a page (in bytes): 0');
    my $big = 'K' x 9000;
    is($c->set($big, 1), 0, 'key bigger than a page: set returns 0');
    is($c->get($big), undef, 'oversized key not found');
    is($c->remove($big), 0, 'oversized key not removable');
    is($c->get('k'), 'small', 'old value still kept');
}

done_testing;
