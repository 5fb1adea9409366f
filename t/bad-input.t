#!perl
# Bad input never crashes (issue 5 item 5): absurd geometry croaks naming
# the option (or, for sizes that are merely enormous, naming the file and
# why it cannot be made) -- never a huge file; odd keys and values (undef,
# empty, larger than a page, references, wide characters, tied and magic
# scalars, numbers, values a serializer refuses) behave as SPEC says or
# croak clearly, and a croak never leaves a page locked.
#
# This file re-runs itself under `ulimit -f 100000` (KB) with SIGXFSZ
# ignored, so even a wrong geometry check cannot fill the disk.
BEGIN {
    if (!$ENV{FMTEST_BAD_INPUT_LIMITED} && -x '/bin/sh') {
        $ENV{FMTEST_BAD_INPUT_LIMITED} = 1;
        exec('/bin/sh', '-c', 'ulimit -f 100000 && exec "$@"', 'sh',
             $^X, (map { "-I$_" } grep { !ref } @INC), $0, @ARGV);
    }
    $SIG{XFSZ} = 'IGNORE';
}
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $dir = FMTest::tmpdir();
note('file size limit (KB): ' . `sh -c 'ulimit -f'`);

# ------------------------------------------------------------- geometry
{
    my @cases = (
        # [options, option named in the croak, what]
        [[num_pages => -1],            'num_pages',   qr/negative/],
        [[num_pages => 'abc'],         'num_pages',   qr/not a number/],
        [[num_pages => '0e0'],         'num_pages',   qr/at least 1/],
        [[num_pages => '0.5'],         'num_pages',   qr/at least 1/],
        [[num_pages => 'inf'],         'num_pages',   qr/finite/],
        [[num_pages => 'nan'],         'num_pages',   qr/finite|number/],
        [[num_pages => '3 pages'],     'num_pages',   qr/number/],
        [[num_pages => 2**40],         'num_pages',   qr/./],
        [[num_pages => 2**64],         'num_pages',   qr/./],
        [[page_size => -5],            'page_size',   qr/negative/],
        [[page_size => 'zz'],          'page_size',   qr/not a number/],
        [[page_size => '0k'],          'page_size',   qr/at least|too small/],
        [[page_size => 256],           'page_size',   qr/too small/],
        [[page_size => 2**31],         'page_size',   qr/larger than the maximum/],
        [[page_size => 2**40],         'page_size',   qr/larger than the maximum/],
        [[start_slots => -1],          'start_slots', qr/negative/],
        [[start_slots => 'x'],         'start_slots', qr/not a number/],
        [[start_slots => 5000, page_size => 4096], 'start_slots', qr/too small/],
        [[start_slots => 2**40],       'start_slots', qr/too small|./],
        [[cache_size => -1],           'cache_size',  qr/negative/],
        [[cache_size => 'abc'],        'cache_size',  qr/not a number/],
        [[cache_size => '1e400'],      'cache_size',  qr/finite|number/],
        [[permissions => 'abc'],       'permissions', qr/./],
        [[permissions => -1],          'permissions', qr/./],
    );
    for my $case (@cases) {
        my ($opts, $name, $why) = @$case;
        my $file = "$dir/geom";
        my $c = eval { Cache::FastMmap->new(share_file => $file, serializer => '', @$opts) };
        my $err = $@;
        my $desc = join(' => ', map { defined $_ ? $_ : 'undef' } @$opts[0, 1])
                 . (@$opts > 2 ? ", ..." : '');
        ok(!$c, "$desc: croaks");
        like($err, qr/\b$name\b/, "$desc: the croak names $name");
        like($err, $why, "$desc: and says why");
        ok(!-e $file, "$desc: no file was created");
        undef $c;
        unlink $file;
    }

    # Sizes that fit the numbers but not the disk: refused before anything
    # big is written, naming the file and the reason.
    for my $opts ([num_pages => 2**31, page_size => 65536],
                  [num_pages => 2**32 - 1, page_size => 2**30],
                  [cache_size => '9999999999m'],
                  [cache_size => '1e300']) {
        my $file = "$dir/huge";
        my $c = eval { Cache::FastMmap->new(share_file => $file, serializer => '', @$opts) };
        my $err = $@;
        my $desc = join(' => ', @$opts);
        ok(!$c, "$desc: croaks");
        like($err, qr/\Q$file\E|num_pages|page_size|cache_size/, "$desc: the croak names the file or the option");
        ok(!-e $file, "$desc: no file left behind");
        opendir(my $dh, $dir) or die;
        is_deeply([grep { /^huge/ } readdir $dh], [], "$desc: no temporary file left behind");
    }

    # 0 / '' / undef mean "the default" (SPEC 1.2), they are not errors.
    for my $opt (qw(num_pages page_size start_slots cache_size)) {
        for my $v (0, '', undef) {
            my $c = eval { Cache::FastMmap->new(share_file => "$dir/zero", serializer => '',
                                                unlink_on_exit => 1, $opt => $v) };
            ok($c, "$opt => " . ($v // 'undef') . ': the default is used') or diag($@);
            is($c && $c->{num_pages} * $c->{page_size}, 89 * 65536, "$opt => " . ($v // 'undef') . ': default geometry')
                if $c;
            undef $c;
        }
    }
}

# ------------------------------------------------------- keys and values
my $c = FMTest::new_cache(num_pages => 3, page_size => 16384, serializer => '');
my $s = FMTest::new_cache(num_pages => 3, page_size => 16384);   # Storable
my $PAGE = 16384;
$c->set("sentinel$_", "s$_") for 1 .. 30;

# every operation below runs bounded: a page left locked after a croak would
# make the next call on it hang (or croak "already locked")
local $SIG{ALRM} = sub { die "TIMEOUT\n" };
alarm 60;

{
    my @w;
    local $SIG{__WARN__} = sub { push @w, $_[0] };
    ok($c->set(undef, 'undef-key'), 'undef key: stored');
    is($c->get(''), 'undef-key', 'undef key is the empty key');
    is($c->get(undef), 'undef-key', 'and reads back as undef key');
    ok($c->set('', ''), 'empty key, empty value');
    is($c->get(''), '', 'empty value reads back as empty, not undef');
    ok($c->set('undef-val', undef), 'undef value (raw mode)');
    ok(!defined $c->get('undef-val'), 'undef value reads back as undef');
    ok($c->exists('undef-val'), 'and exists');
    ok($s->set('undef-val', undef), 'undef value (Storable)');
    ok(!defined $s->get('undef-val'), 'reads back as undef');
}

# larger than a page: set returns 0, nothing breaks
{
    for my $case (['value', 'big', 'v' x ($PAGE + 1)],
                  ['value of exactly a page', 'big2', 'v' x $PAGE],
                  ['key', 'k' x ($PAGE + 1), 'v'],
                  ['key and value of 1 MB', 'K' x 2**20, 'V' x 2**20]) {
        my ($what, $k, $v) = @$case;
        my $r = eval { $c->set($k, $v) };
        is($@, '', "huge $what: no croak");
        ok(defined $r && !$r, "huge $what: set returns false");
        ok(!defined $c->get($k), "huge $what: not found afterwards");
    }
    ok(!$s->set('big', { blob => 'x' x (2 * $PAGE) }), 'huge serialized value: set returns false');
    is_deeply([grep { ($c->get("sentinel$_") // '') ne "s$_" } 1 .. 30], [], 'other entries intact');
    my $r = $c->get_and_set('gas-big', sub { 'g' x (2 * $PAGE) });
    ok(!defined $c->get('gas-big'), 'get_and_set with a huge value: not stored, no crash');
    ok($c->set('after-big', 1) && $c->get('after-big') == 1, 'cache still works');
}

# references as keys (stringified); references as values
{
    my $ref = [1, 2, 3];
    ok($c->set($ref, 'by-ref'), 'array ref key');
    is($c->get("$ref"), 'by-ref', 'found by its stringified form');
    my $h = {};
    ok($s->set($h, { a => [1] }), 'hash ref key, hash value (Storable)');
    is_deeply($s->get("$h"), { a => [1] }, 'round trip');
    my $code = sub { 1 };
    ok($c->set($code, 'code-key'), 'code ref key');
    is($c->get("$code"), 'code-key', 'found by its stringified form');
    # raw mode with a reference value: stored as its string
    ok($c->set('ref-val', $ref), 'raw mode: reference value');
    is($c->get('ref-val'), "$ref", 'stored as its string');
    # a value Storable refuses: a clear croak, page released
    my $ok = eval { $s->set('code-val', sub { 1 }); 1 };
    my $err = $@;
    ok(!$ok, 'Storable: a code ref value croaks');
    like($err, qr/CODE/, 'the croak says why');
    ok($s->set('code-val', 'fine'), 'the page is usable after the croak');
    is($s->get('code-val'), 'fine', 'and reads back');
    # a get_and_set callback that dies: page released
    $ok = eval { $c->get_and_set('dies', sub { die "callback died\n" }); 1 };
    is($@, "callback died\n", 'a dying get_and_set callback: its error comes through');
    ok($c->set('dies', 'ok') && $c->get('dies') eq 'ok', 'and the page is usable');
}

# wide characters, binary, NULs
{
    my $k = "wide\x{263A}\x{10FFFF}";
    my $v = "value \x{2603} \x{1F600}";
    ok($c->set($k, $v), 'wide-character key and value (raw mode)');
    is($c->get($k), $v, 'round trip');
    ok(utf8::is_utf8($c->get($k)), 'the value keeps its UTF-8 flag');
    is_deeply([grep { $_ eq $k } $c->get_keys(0)], [$k], 'get_keys gives the wide key back');
    ok($s->set($k, [$v]), 'wide characters with Storable');
    is_deeply($s->get($k), [$v], 'round trip');
    my $bin = join '', map { chr } 0 .. 255;
    ok($c->set("nul\0key", $bin), 'NUL in key, all byte values in value');
    is($c->get("nul\0key"), $bin, 'round trip');
    ok(!defined $c->get('nul'), 'the key is not cut at the NUL');
}

# tied and magic scalars, numbers
{
    package Counted;
    sub TIESCALAR { my ($c, $v) = @_; bless { v => $v, n => 0 }, $c }
    sub FETCH { $_[0]{n}++; $_[0]{v} }
    sub STORE { $_[0]{v} = $_[1] }
    package main;
    tie my $tk, 'Counted', 'tied-key';
    tie my $tv, 'Counted', 'tied-value';
    ok($c->set($tk, $tv), 'tied key and value');
    is($c->get('tied-key'), 'tied-value', 'stored what FETCH returned');
    is($c->get($tk), 'tied-value', 'a tied key reads back');
    ok(tied($tk)->{n} >= 1 && tied($tv)->{n} >= 1, 'FETCH was called');

    'abcdef' =~ /(c)(d)/;
    ok($c->set($1, $2), 'regex capture variables as key and value');
    is($c->get('c'), 'd', 'round trip');
    my $str = 'hello world';
    ok($c->set(substr($str, 0, 5), substr($str, 6)), 'substr lvalues');
    is($c->get('hello'), 'world', 'round trip');

    for my $n (0, 1, -1, 1.5, 1e100, -0.0, 2**53, 0x7fffffff) {
        ok($c->set($n, $n * 2), "number key $n");
        is($c->get("$n"), $n * 2, "number key $n found by its string form");
    }
    my $vs = v1.2.3;
    ok($c->set($vs, 'vstring'), 'a v-string key');
    is($c->get("\x01\x02\x03"), 'vstring', 'is its characters');
    use constant RO => 'read-only';
    ok($c->set(RO, RO), 'read-only constant key and value');
    is($c->get('read-only'), 'read-only', 'round trip');
    ok($c->set(*STDOUT, 'glob'), 'a glob as key');
    is($c->get('*main::STDOUT'), 'glob', 'is its name');
}

alarm 0;
is_deeply([grep { ($c->get("sentinel$_") // '') ne "s$_" } 1 .. 30], [],
          'after all of this, the sentinel entries are intact');
is($c->repaired_pages, 0, 'nothing needed repairing');

done_testing;
