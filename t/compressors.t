#!perl
# Compressors (SPEC 1.1 `compressor`/`compress`, 1.4, 5.11): zlib, lz4,
# snappy and custom [ $compress, $uncompress ] pairs; the pipeline order
# (serialize, then compress; uncompress, then deserialize); the deprecated
# `compress` option (any true value means zlib); the exact die messages for
# unknown and unloadable compressors; raw mode + compressor + undef gives
# '' back; the zlib uncompress closure's source form (B::Deparse and
# Data::Dumper see `&$uncompress(my $Tmp = shift())`); and large
# compressible values that only fit compressed.
#
# Compress::Zlib is core, but a minimal perl may lack it; Compress::LZ4 and
# Compress::Snappy are optional.  The subtests (and parts of subtests) that
# need one skip when it is missing, except under FASTMMAP_CI, where a missing
# module is a failure.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use B::Deparse ();
use Data::Dumper ();
use Storable ();

# ------------------------------------------------------------------ helpers

sub need_modules { FMTest::need_modules(@_) }

sub geometry { (num_pages => 3, page_size => 65536) }

# A second object on the same file with neither serializer nor compressor:
# shows the bytes that were really stored.
sub raw_view {
    my ($c) = @_;
    return Cache::FastMmap->new(share_file => $c->{share_file}, init_file => 0,
        geometry(), serializer => '', compressor => 0, unlink_on_exit => 0);
}

sub is_locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) }

sub is_gzip { defined $_[0] && substr($_[0], 0, 2) eq "\x1f\x8b" }

# The statements of a code ref's deparsed body, pragmas and package lines
# left out.
sub body_statements {
    my ($code) = @_;
    my $text = B::Deparse->new->coderef2text($code);
    my @lines = grep { /\S/ && !/^\s*(?:use|no|package)\b/ && !/^\s*[{}]\s*$/ }
        split /\n/, $text;
    s/^\s+|\s+$//g for @lines;
    return @lines;
}

my %values = (
    'plain'   => 'hello',
    'empty'   => '',
    'undef'   => undef,
    'nested'  => { list => [1, [2, { deep => "\x{263A}" }]], u => undef },
    'wide'    => "caf\x{e9} \x{263A}",
    'binary'  => join('', map { chr } 0 .. 255),
    'repeats' => 'abcdefgh' x 2000,
);

# Round trips through set/get, multi_set/multi_get, get_keys(2) and
# get_and_set with a storable serializer and the given compressor options.
sub round_trips {
    my ($label, %opts) = @_;
    my $c = FMTest::new_cache(geometry(), %opts);
    for my $name (sort keys %values) {
        is($c->set("k:$name", $values{$name}), 1, "$label: set $name");
        is_deeply($c->get("k:$name"), $values{$name}, "$label: get gives back $name");
    }
    my %by_key = map { $_->{key} => $_->{value} } $c->get_keys(2);
    is_deeply($by_key{"k:$_"}, $values{$_}, "$label: get_keys(2) value of $_") for sort keys %values;
    my %kv = map { ("m:$_" => $values{$_}) } keys %values;
    is($c->multi_set('pg', \%kv), 1, "$label: multi_set");
    is_deeply($c->multi_get('pg', [sort keys %kv]), \%kv, "$label: multi_get");
    $c->set('n', 41);
    is_deeply([ $c->get_and_set('n', sub { $_[1] + 1 }) ], [42, 1], "$label: get_and_set");
    is($c->get('n'), 42, "$label: get_and_set stored through the compressor");
    ok(!is_locked($c), "$label: no page left locked");
    return $c;
}

# new(%opts) in a child where module files matching $block fail to load;
# returns the die message, or 'LIVED'.
sub new_error_with_blocked {
    my ($block, %opts) = @_;
    my ($msg, $st) = FMTest::new_error_with_blocked($block, geometry(), %opts);
    is($st, 0, "child for blocked $block exited cleanly") or diag FMTest::describe_status($st);
    return $msg;
}

# ------------------------------------------------------------------ none

subtest 'no compressor by default' => sub {
    my $c = FMTest::new_cache(geometry());
    ok(!exists $c->{compress} && !exists $c->{uncompress}, 'no compress/uncompress keys without a compressor');
    $c->set('k', 'v');
    is_deeply(Storable::thaw(raw_view($c)->get('k')), \'v', 'value stored frozen, not compressed');
};

# ------------------------------------------------------------------ zlib

subtest 'zlib' => sub {
    need_modules('Compress::Zlib') or return;
    my $c = round_trips('zlib', compressor => 'zlib');
    is($c->{compress}, Compress::Zlib->can('memGzip'), 'zlib: compress is Compress::Zlib::memGzip');
    is(ref $c->{uncompress}, 'CODE', 'zlib: uncompress is a code ref');

    # Pipeline order: compress(serialize(\$v)) is what lands in the file.
    $c->set('order', [1, 2]);
    my $raw = raw_view($c)->get('order');
    ok(is_gzip($raw), 'zlib: stored bytes are gzip data');
    is_deeply(Storable::thaw(Compress::Zlib::memGunzip(my $t = $raw)), \[1, 2],
        'zlib: ... of the frozen reference to the value');

    # The uncompress closure: exactly one statement, upstream's source form.
    is_deeply([ body_statements($c->{uncompress}) ], ['&$uncompress(my $Tmp = shift());'],
        'zlib: uncompress deparses to &$uncompress(my $Tmp = shift())');
    {
        local $Data::Dumper::Deparse = 1;
        my $dumper_form = q{&$uncompress(my $Tmp = shift};
        like(Data::Dumper::Dumper($c->{uncompress}), qr/\Q$dumper_form\E(?:\(\)| \@_)\);/,
            'zlib: Data::Dumper with Deparse shows the same text');
    }
    # It works on a private copy: the caller's buffer is left intact.
    my $gz = Compress::Zlib::memGzip('payload');
    my $copy = $gz;
    is($c->{uncompress}->($gz), 'payload', 'zlib: uncompress inflates memGzip output');
    is($gz, $copy, "zlib: uncompress leaves the caller's buffer unchanged");

    # Raw mode: compression applies to the plain bytes.
    my $r = FMTest::new_cache(geometry(), serializer => '', compressor => 'zlib');
    $r->set('s', "caf\x{e9}");
    $raw = raw_view($r)->get('s');
    ok(is_gzip($raw), 'zlib raw: stored bytes are gzip data');
    is(Compress::Zlib::memGunzip($raw), "caf\x{e9}", 'zlib raw: ... of the value bytes');
    is($r->get('s'), "caf\x{e9}", 'zlib raw: get inflates');
    my %by_key = map { $_->{key} => $_->{value} } $r->get_keys(2);
    is($by_key{s}, "caf\x{e9}", 'zlib raw: get_keys(2) inflates values');

    # SPEC 1.4: raw mode + compressor + undef value: memGzip(undef) stores a
    # gzip of '', so get returns '' and not undef.
    $r->set('u', undef);
    my $got = $r->get('u');
    ok(defined $got, 'zlib raw: a stored undef comes back defined');
    is($got, '', "zlib raw: ... as ''");
    ok(is_gzip(raw_view($r)->get('u')), 'zlib raw: what was stored for undef is gzip data');
};

# ------------------------------------------------------------------ lz4 / snappy

for my $case ([ lz4 => 'Compress::LZ4' ], [ snappy => 'Compress::Snappy' ]) {
    my ($name, $module) = @$case;
    subtest $name => sub {
        need_modules($module) or return;
        my $c = round_trips($name, compressor => $name);
        is($c->{compress}, $module->can('compress'), "$name: compress is ${module}::compress");
        is($c->{uncompress}, $module->can('uncompress'), "$name: uncompress is ${module}::uncompress");
        $c->set('order', { a => 'b' x 500 });
        my $raw = raw_view($c)->get('order');
        my $plain = $module->can('uncompress')->($raw);
        is_deeply(Storable::thaw($plain), \{ a => 'b' x 500 }, "$name: stored bytes are the compressed frozen value");
        cmp_ok(length $raw, '<', length $plain, "$name: ... and smaller than the frozen value");

        my $r = FMTest::new_cache(geometry(), serializer => '', compressor => $name);
        $r->set('s', 'xyz' x 100);
        is($module->can('uncompress')->(raw_view($r)->get('s')), 'xyz' x 100, "$name raw: stored bytes decompress to the value");
        is($r->get('s'), 'xyz' x 100, "$name raw: get decompresses");
    };
}

# ------------------------------------------------------------------ custom pair

subtest 'custom compressor pair' => sub {
    my (@c_args, @u_args);
    my $comp = sub { push @c_args, $_[0]; 'Z' . reverse($_[0] // '<undef>') };
    my $unc  = sub { push @u_args, $_[0]; scalar reverse substr($_[0], 1) };

    my $c = round_trips('custom', compressor => [ $comp, $unc ]);
    is($c->{compress}, $comp, 'custom: compress is the given code ref');
    is($c->{uncompress}, $unc, 'custom: uncompress is the given code ref');

    # With storable: compress gets the frozen bytes, uncompress the stored bytes.
    @c_args = @u_args = ();
    $c->set('k', [7]);
    is(scalar @c_args, 1, 'custom: compress called once per set');
    is_deeply(Storable::thaw($c_args[0]), \[7], 'custom: compress receives the serialized value');
    my $raw = raw_view($c)->get('k');
    is($raw, 'Z' . reverse($c_args[0]), 'custom: the compress result is what is stored');
    is_deeply($c->get('k'), [7], 'custom: get goes through uncompress then deserialize');
    is_deeply(\@u_args, [$raw], 'custom: uncompress receives the stored bytes');

    # Raw mode: compress sees the value itself, even undef (SPEC 1.4: the
    # write side does not check definedness; the read side only decompresses
    # defined stored values, and this stored value is defined).
    my $r = FMTest::new_cache(geometry(), serializer => '', compressor => [ $comp, $unc ]);
    @c_args = @u_args = ();
    $r->set('s', 'abc');
    is_deeply(\@c_args, ['abc'], 'custom raw: compress receives the value bytes');
    is(raw_view($r)->get('s'), 'Zcba', 'custom raw: stored bytes are the compress result');
    is($r->get('s'), 'abc', 'custom raw: get uncompresses');
    @c_args = ();
    $r->set('u', undef);
    is(scalar @c_args, 1, 'custom raw: compress is called for an undef value');
    ok(!defined $c_args[0], '... with undef');
    is($r->get('u'), '<undef>', 'custom raw: get returns the uncompressed form of what compress made of undef');

    # An uncompress that dies: the error propagates, the page is released.
    my $die = 0;
    my $d = FMTest::new_cache(geometry(), serializer => '',
        compressor => [ sub { $_[0] }, sub { die "inflate boom\n" if $die; $_[0] } ]);
    $d->set('k', 'v');
    $die = 1;
    ok(!eval { $d->get('k'); 1 }, 'custom: a dying uncompress makes get die');
    is($@, "inflate boom\n", '... with its error');
    ok(!is_locked($d), '... and the page is not left locked');
    $die = 0;
    is($d->get('k'), 'v', 'custom: the next get works');
};

# ------------------------------------------------------------------ deprecated compress

subtest 'deprecated compress option' => sub {
    need_modules('Compress::Zlib') or return;
    for my $v (1, 'yes', 'Compress::Zlib', 'Compress::LZ4', 'Compress::NonExistent', 'lz4') {
        my $c = FMTest::new_cache(geometry(), serializer => '', compress => $v);
        is($c->{compress}, Compress::Zlib->can('memGzip'), "compress => '$v' selects zlib");
        is_deeply([ body_statements($c->{uncompress}) ], ['&$uncompress(my $Tmp = shift());'],
            "compress => '$v': the zlib uncompress closure");
        $c->set('k', 'value');
        ok(is_gzip(raw_view($c)->get('k')), "compress => '$v': values are stored gzipped");
        is($c->get('k'), 'value', "compress => '$v': and read back");
    }
    for my $v (0, '', undef) {
        my $c = FMTest::new_cache(geometry(), serializer => '', compress => $v);
        ok(!exists $c->{compress}, 'compress => ' . (defined $v ? "'$v'" : 'undef') . ' means no compressor');
    }
    # A defined compressor always wins, even a false one.
    my $c = FMTest::new_cache(geometry(), serializer => '', compress => 1, compressor => 0);
    ok(!exists $c->{compress}, 'compressor => 0 wins over compress => 1');
    $c = FMTest::new_cache(geometry(), serializer => '', compress => 1, compressor => '');
    ok(!exists $c->{compress}, "compressor => '' wins over compress => 1");
    my $pair = [ sub { "P$_[0]" }, sub { substr($_[0], 1) } ];
    $c = FMTest::new_cache(geometry(), serializer => '', compress => 1, compressor => $pair);
    $c->set('k', 'v');
    is(raw_view($c)->get('k'), 'Pv', 'a custom compressor wins over compress => 1');
    SKIP: {
        skip 'Compress::LZ4 not installed', 1 unless FMTest::have_module('Compress::LZ4');
        $c = FMTest::new_cache(geometry(), serializer => '', compress => 1, compressor => 'lz4');
        is($c->{compress}, Compress::LZ4->can('compress'), "compressor => 'lz4' wins over compress => 1");
    }
};

# ------------------------------------------------------------------ errors

subtest 'unknown compressor names' => sub {
    for my $name ('x', 'gzip', 'Zlib', 'ZLIB', 'LZ4', 'Compress::Zlib', '1', 'zlib ') {
        ok(!eval { FMTest::new_cache(geometry(), compressor => $name); 1 }, "compressor '$name' dies");
        like($@, qr/\A\QUnrecognized value >$name< for `compressor` parameter\E at /,
            "... with the exact upstream message for '$name'");
    }
};

subtest 'unloadable compressor modules' => sub {
    for my $case ([ zlib => 'Compress::Zlib' ], [ lz4 => 'Compress::LZ4' ], [ snappy => 'Compress::Snappy' ]) {
        my ($name, $module) = @$case;
        (my $file = "$module.pm") =~ s{::}{/}g;
        my $msg = new_error_with_blocked(qr/\A\Q$file\E\z/, compressor => $name);
        like($msg, qr/\A\QCould not load compression package: $module : \E.*simulated load failure/s,
            "compressor '$name' with $file unloadable dies with the upstream message");
    }
    my $msg = new_error_with_blocked(qr{\ACompress/Zlib\.pm\z}, compress => 1);
    like($msg, qr/\A\QCould not load compression package: Compress::Zlib : \E/,
        'deprecated compress => 1 with Compress::Zlib unloadable dies the same way');
    $msg = new_error_with_blocked(qr{\ACompress/}, compressor => [ sub { $_[0] }, sub { $_[0] } ]);
    is($msg, 'LIVED', 'a custom pair loads no compression module');
};

# ------------------------------------------------------------------ large values

subtest 'large compressible values fit only compressed' => sub {
    # 300000 bytes cannot fit in a 64k page; compressed they are tiny.
    my $big = join '', map { "line $_ of a very repetitive value\n" } 1 .. 8000;
    cmp_ok(length $big, '>', 4 * 65536, 'the value is several pages long');

    my $plain = FMTest::new_cache(geometry(), serializer => '');
    is($plain->set('big', $big), 0, 'uncompressed: set reports failure');
    ok(!defined $plain->get('big'), 'uncompressed: nothing stored');

    my @names = grep { FMTest::have_module($_->[1]) }
        [ zlib => 'Compress::Zlib' ], [ lz4 => 'Compress::LZ4' ], [ snappy => 'Compress::Snappy' ];
    @names = map { $_->[0] } @names;
    for my $name (@names) {
        for my $ser ('', 'storable') {
            my $c = FMTest::new_cache(geometry(), serializer => $ser, compressor => $name);
            is($c->set('big', $big), 1, "$name/" . ($ser || 'raw') . ': set of the large value succeeds');
            is($c->get('big'), $big, "$name/" . ($ser || 'raw') . ': ... and it reads back intact');
            cmp_ok(length(raw_view($c)->get('big')), '<', 65536, "$name/" . ($ser || 'raw') . ': stored form fits a page');
        }
    }
    # run-length coding in runs of at most 30000 (regex recursion limit)
    my $rle = sub {
        my $out = '';
        $out .= $2 . length($1) . ';' while $_[0] =~ /\G((.)\2{0,29999})/gs;
        return $out;
    };
    my $unrle = sub { my $s = $_[0]; $s =~ s/(.)(\d+);/$1 x $2/gse; $s };
    my $c = FMTest::new_cache(geometry(), serializer => '', compressor => [ $rle, $unrle ]);
    my $runs = 'a' x 100000 . 'b' x 100000;
    is($c->set('runs', $runs), 1, 'custom run-length pair: a 200000-byte value is stored');
    is($c->get('runs'), $runs, '... and read back');
};

done_testing;
