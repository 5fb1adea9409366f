#!perl
# Differential test against the C-core reference (issue 3 item 5).
#
# The same seeded random operation sequences run against
#   * Debian's upstream Cache::FastMmap 1.57 (package libcache-fastmmap-perl),
#     loaded in a SEPARATE perl process started without this checkout's
#     blib/lib (PERL5LIB and friends cleared), and
#   * this build, in the test process (guarded by FMTest),
# and the results are compared op by op.
#
# Only behaviour 1.57 and 1.63 share is exercised (SPEC section 4): no
# exists(), no modseq/tombstones, no callbacks, no failing oversized sets and
# no eviction pressure (89 pages x 64k per cache, a bounded key space, values
# of at most a few KB).  Time moves forward through _set_time_override so
# that entries expire.
#
# Ops: set (with and without expiry in every accepted form), get, remove,
# get_and_set increments (with and without options, and no-op callbacks),
# get_and_remove, multi_set/multi_get, expire, get_keys(0) as a sorted set,
# get_keys(2) as a sorted set of records, clear, purge, empty(1),
# get_statistics, parse_expire_time, and the time override.  Keys and values
# include UTF-8 (wide and upgraded latin-1), downgraded latin-1, binary,
# undef and empty strings; caches use serializer '' and 'storable', with and
# without a default expire_time.
#
# Environment:
#   FASTMMAP_DIFF_ROUNDS  number of seeds (default 20)
#   FASTMMAP_DIFF_OPS     ops per seed (default 500)
#   FASTMMAP_DIFF_SEED    first seed (default 1); seeds are consecutive
#   FASTMMAP_DIFF_TRACE   a directory: for every seed with a mismatch, the
#                         whole sequence with both results is written there
#                         as seed-N.txt
#   FASTMMAP_CI           a missing or wrong 1.57 fails instead of skipping
#
# Run:  make && prove -b xt/differential.t
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use File::Spec ();
use Scalar::Util ();
use Storable ();
use Digest::MD5 ();

my $ROUNDS = $ENV{FASTMMAP_DIFF_ROUNDS} || 20;
my $NOPS   = $ENV{FASTMMAP_DIFF_OPS}    || 500;
my $SEED0  = $ENV{FASTMMAP_DIFF_SEED}   || 1;
for ([ROUNDS => $ROUNDS], [OPS => $NOPS], [SEED => $SEED0]) {
    die "FASTMMAP_DIFF_$_->[0] must be a positive integer\n" unless $_->[1] =~ /\A[1-9]\d{0,6}\z/;
}

my $dir = FMTest::tmpdir();

# ---------------------------------------------------------------------------
# The op runner.  The very same source is compiled in the oracle process
# (against 1.57) and here (against our build).
# ---------------------------------------------------------------------------
my $RUNNER = <<'END_RUNNER';
package DiffRunner;
use strict;
no warnings;

sub _err {
    my $e = shift;
    $e = "$e";
    $e =~ s/ at \S+ line \d+\.?\n?\z//;
    return $e;
}

sub run_op {
    my ($c, $op) = @_;
    my ($name, @a) = @$op;
    if ($name eq 'time')   { Cache::FastMmap::_set_time_override($a[0]); return () }
    if ($name eq 'set')    { return scalar $c->set(@a) }
    if ($name eq 'get')    { return scalar $c->get($a[0]) }
    if ($name eq 'remove') { return scalar $c->remove($a[0]) }
    if ($name eq 'expire') { return scalar $c->expire($a[0]) }
    if ($name eq 'gar')    { return [ $c->get_and_remove($a[0]) ] }
    if ($name eq 'gar_s')  { return scalar $c->get_and_remove($a[0]) }
    if ($name eq 'incr') {
        my ($key, $how, $extra) = @a;
        my @seen;
        my $cb = sub {
            @seen = ($_[0], $_[1], { %{ $_[2] || {} } });
            return () if $how eq 'noop';
            my $v = $_[1];
            my $n = (defined $v && !ref $v && $v =~ /\A\d{1,9}\z/) ? $v + 1 : 1;
            return ($n, $extra) if $how eq 'opts';
            return $n;
        };
        my @r = $c->get_and_set($key, $cb);
        return [ \@r, \@seen ];
    }
    if ($name eq 'incr_s') { return scalar $c->get_and_set($a[0], sub { defined $_[1] && $_[1] =~ /\A\d{1,9}\z/ ? $_[1] + 1 : 1 }) }
    if ($name eq 'mset')   { return scalar $c->multi_set(@a) }
    if ($name eq 'mget')   { return $c->multi_get(@a) }
    if ($name eq 'keys')   { return [ $c->get_keys($a[0]) ] }
    if ($name eq 'clear')  { $c->clear; return () }
    if ($name eq 'purge')  { $c->purge; return () }
    if ($name eq 'empty')  { $c->empty(@a); return () }
    if ($name eq 'stats')  { return [ $c->get_statistics(@a) ] }
    if ($name eq 'pet')    { return Cache::FastMmap::parse_expire_time(@a) }
    die "unknown op $name\n";
}

# run_round($round, $dir) -> [ result of each op ]
sub run_round {
    my ($round, $dir) = @_;
    local $SIG{__WARN__} = sub { };
    my $file = "$dir/diff-$$-seed$round->{seed}";
    unlink $file;
    my $c = Cache::FastMmap->new(%{ $round->{opts} },
        share_file => $file, init_file => 1, unlink_on_exit => 1);
    my @res;
    for my $op (@{ $round->{ops} }) {
        my @r;
        my $ok = eval { @r = run_op($c, $op); 1 };
        push @res, $ok ? \@r : [ 'DIED', _err($@) ];
    }
    Cache::FastMmap::_set_time_override();
    undef $c;
    unlink $file;
    return \@res;
}
1;
END_RUNNER

my $ORACLE = <<'END_ORACLE';
use strict;
use warnings;
no warnings 'once';
BEGIN { $SIG{ALRM} = 'DEFAULT'; alarm(900) }
use Storable ();
my ($mode, $dir, $in, $out) = @ARGV;
my $loaded = eval { require Cache::FastMmap; 1 };
if ($mode eq 'probe') {
    (my $err = $@) =~ s/\s+/ /g;
    print join("\t", 'PROBE', ($loaded ? 'loaded' : "missing: $err"),
        $Cache::FastMmap::VERSION // '', $Cache::FastMmap::IMPLEMENTATION // '',
        $INC{'Cache/FastMmap.pm'} // ''), "\n";
    exit 0;
}
die "Cache::FastMmap did not load: $@" unless $loaded;
END_ORACLE

# ---------------------------------------------------------------------------
# Start the oracle: a plain perl, none of our paths, file size bounded.
# ---------------------------------------------------------------------------
sub run_oracle {
    my (@args) = @_;
    my $script = File::Spec->catfile($dir, 'oracle.pl');
    open my $fh, '>', $script or die "$script: $!";
    print $fh $ORACLE, $RUNNER,
        "\nmy \$rounds = Storable::retrieve(\$in);\n",
        "Storable::nstore([ map { DiffRunner::run_round(\$_, \$dir) } \@\$rounds ], \$out);\n";
    close $fh or die "$script: $!";
    my $outfile = File::Spec->catfile($dir, "oracle-$args[0].out");
    local %ENV = %ENV;
    delete @ENV{qw(PERL5LIB PERLLIB PERL5OPT PERL5DB PERL_DL_NONLAZY HARNESS_PERL_SWITCHES)};
    # ulimit -f: never let the reference write big files (COMMON.md).
    my $rc = system('/bin/sh', '-c', 'ulimit -f 100000 && exec "$@" >"$0" 2>&1',
        $outfile, $^X, $script, @args);
    my $text = do { local (@ARGV, $/) = ($outfile); <> } // '';
    return ($rc, $text);
}

my ($prc, $probe) = run_oracle('probe', $dir);
my ($probe_line) = $probe =~ /^PROBE\t(.*)$/m;
my ($state, $version, $impl, $path) = split /\t/, $probe_line // '', -1;
my $problem;
if ($prc != 0 || !defined $path) {
    $problem = "probe of the system Cache::FastMmap failed (status $prc): $probe";
}
elsif ($state ne 'loaded') {
    $problem = "no system Cache::FastMmap installed (apt-get install libcache-fastmmap-perl): $state";
}
elsif ($impl ne '' || index($path, $FMTest::ROOT) == 0) {
    $problem = "the system Cache::FastMmap at $path is not the C-core reference (IMPLEMENTATION '$impl')";
}
elsif ($version ne '1.57') {
    $problem = "the system Cache::FastMmap is version $version, not 1.57 ($path)";
}
if ($problem) {
    if ($ENV{FASTMMAP_CI}) {
        fail("FASTMMAP_CI: $problem");
        done_testing;
        exit 0;
    }
    plan skip_all => $problem;
}
diag "reference: Cache::FastMmap $version from $path";

# ---------------------------------------------------------------------------
# Op generation (here only; both sides read the same Storable file).
# ---------------------------------------------------------------------------
{
    package DiffRng;     # 31-bit LCG: the same sequence on every perl
    sub new   { my ($c, $s) = @_; bless { s => ($s * 2654435761 + 1) % 2147483648 }, $c }
    sub below  { my ($r, $n) = @_; $r->{s} = ($r->{s} * 1103515245 + 12345) % 2147483648; CORE::int(($r->{s} >> 8) * $n / 8388608) }
    sub pick   { my ($r, $l) = @_; $l->[ $r->below(scalar @$l) ] }
    sub chance { my ($r, $pct) = @_; $r->below(100) < $pct }
}

my $T0 = FMTest::T0;

sub upgraded   { my $s = shift; utf8::upgrade($s); $s }
sub downgraded { my $s = shift; utf8::downgrade($s); $s }

sub key_pool {
    my ($rng) = @_;
    my @k = map { "key$_" } 0 .. 29;
    push @k, '', ' ', '0', "caf\x{e9}", upgraded("caf\x{e9}"), "\x{263A}", "\x{263A}\x{1F600}",
        "bin\0\xff\x80", "\xe2\x98\xba", 'x' x 300, "tab\tnl\n", upgraded('plain-upgraded');
    return \@k;
}

sub random_string {
    my ($rng, $rich) = @_;
    my $kind = $rng->below(10);
    my $len = $rng->chance(5) ? 500 + $rng->below(3000) : $rng->below(40);
    return join '', map { chr(97 + $rng->below(26)) } 1 .. $len        if $kind <= 3;
    return join '', map { chr($rng->below(256)) } 1 .. $len            if $kind == 4;
    return join '', map { chr(0x100 + $rng->below(0x2000)) } 1 .. $len if $kind == 5;
    return upgraded(join '', map { chr(160 + $rng->below(96)) } 1 .. $len) if $kind == 6;
    return downgraded(join '', map { chr(160 + $rng->below(96)) } 1 .. $len) if $kind == 7;
    return $rng->below(1000)                                            if $kind == 8;
    return "\x{1F600}" x (1 + $rng->below(5));
}

sub random_value {
    my ($rng, $rich, $depth) = @_;
    $depth //= 0;
    my $r = $rng->below(100);
    return undef if $r < 8;
    return ''    if $r < 14;
    return $rng->below(50) if $r < 22;       # small ints feed the increments
    return random_string($rng) if !$rich || $r < 60 || $depth > 2;
    return [ map { random_value($rng, 1, $depth + 1) } 1 .. $rng->below(5) ] if $r < 75;
    return { map { (random_string($rng) => random_value($rng, 1, $depth + 1)) } 1 .. $rng->below(5) } if $r < 90;
    return \random_value($rng, 1, $depth + 1) if $r < 95;
    return 3.25 * ($rng->below(9) - 4);
}

sub random_expiry {
    my ($rng, $now) = @_;
    my $n = 1 + $rng->below(30);
    return $rng->pick([
        $n, "$n", "${n}s", '1m', "$n seconds", { expire_time => $n }, { expire_time => "${n}s" },
        { expire_on => $now + $n }, { expire_on => 0 }, { expire_time => 'never' }, 'never',
        0, '', -1, 'garbage', 'now', { expire_time => 0 }, { expire_on => $now - 1 },
        { expire_on => undef, expire_time => $n }, {},
    ]);
}

my @PET_SPECS = ('10', '10s', '1m', '1M', '1h', '1d', '1w', '1 minute', '2 hours', '1.5h', '5x',
    'garbage', ' 5m', '-5', 's', 'never', 'now', '', 0, undef, '3 days', '7W', '0s', '12H');

sub make_round {
    my ($seed) = @_;
    my $rng = DiffRng->new($seed);
    my $rich = $seed % 2 == 0;       # even seeds: storable, odd seeds: raw
    my %opts = (num_pages => 89, page_size => 65536,
        serializer => $rich ? 'storable' : '');
    $opts{expire_time} = $rng->pick([0, '5s', 20, '1m']) if $rng->chance(50);
    $opts{enable_stats} = 1 if $rng->chance(50);
    my $keys = key_pool($rng);
    my @page_keys = ('pA', 'pB', "p\x{263A}");
    my $now = $T0;
    my @ops = ([ time => $now ]);
    for (1 .. $NOPS) {
        my $r = $rng->below(1000);
        my $k = $rng->chance(1) ? undef : $rng->pick($keys);
        if    ($r < 200) { push @ops, [ set => $k, random_value($rng, $rich) ] }
        elsif ($r < 300) { push @ops, [ set => $k, random_value($rng, $rich), random_expiry($rng, $now) ] }
        elsif ($r < 480) { push @ops, [ get => $k ] }
        elsif ($r < 530) { push @ops, [ remove => $k ] }
        elsif ($r < 600) {
            my $how = $rng->pick([qw(plain plain opts noop)]);
            push @ops, [ incr => $k, $how, $how eq 'opts' ? random_expiry($rng, $now) : undef ];
            $ops[-1][3] = { expire_time => $ops[-1][3] } if $how eq 'opts' && !ref $ops[-1][3];
        }
        elsif ($r < 615) { push @ops, [ incr_s => $k ] }
        elsif ($r < 645) { push @ops, [ ($rng->chance(50) ? 'gar' : 'gar_s') => $k ] }
        elsif ($r < 685) {
            # multi_set walks the hash in random order: never give it two
            # keys that end up as the same cache key, or the winner would
            # depend on hash order.  The module builds "$PageKey-$Key" under
            # `use bytes`, i.e. from the internal bytes of both strings, so
            # a wide key and its UTF-8 bytes collide.
            my $pk = $rng->pick(\@page_keys);
            my (%kv, %bytes);
            for (1 .. 1 + $rng->below(4)) {
                my $k = $rng->pick($keys);
                my $fk = join '-', map { my $x = $_; utf8::encode($x) if utf8::is_utf8($x); $x } $pk, $k;
                next if $bytes{$fk}++ || exists $kv{$k};
                $kv{$k} = random_value($rng, $rich);
            }
            push @ops, [ mset => $pk, \%kv, ($rng->chance(40) ? random_expiry($rng, $now) : ()) ];
        }
        elsif ($r < 725) {
            push @ops, [ mget => $rng->pick(\@page_keys), [ map { $rng->pick($keys) } 1 .. 1 + $rng->below(6) ] ];
        }
        elsif ($r < 770) { push @ops, [ expire => $k ] }
        elsif ($r < 800) { push @ops, [ keys => 0 ] }
        elsif ($r < 815) { push @ops, [ keys => $rng->pick([1, 2]) ] }
        elsif ($r < 820) { push @ops, [ 'clear' ] }
        elsif ($r < 835) { push @ops, [ 'purge' ] }
        elsif ($r < 840) { push @ops, [ empty => 1 ] }
        elsif ($r < 850) { push @ops, [ stats => $rng->chance(30) ? 1 : () ] }
        elsif ($r < 900) {
            my $spec = $rng->chance(30) ? (1 + $rng->below(99)) . $rng->pick(['', 's', 'm', 'h', 'd', 'w', ' mins', 'x'])
                                        : $rng->pick(\@PET_SPECS);
            push @ops, [ pet => $spec, ($rng->chance(50) ? ($now + $rng->below(100)) : ()) ];
        }
        else {
            $now += $rng->pick([0, 1, 1, 2, 3, 5, 8, 13, 30, 61]);
            push @ops, [ time => $now ];
        }
    }
    return { seed => $seed, opts => \%opts, ops => \@ops };
}

# ---------------------------------------------------------------------------
# Canonical text of a result: type, UTF-8 flag and bytes of every string.
# ---------------------------------------------------------------------------
sub canon_str {
    my ($s) = @_;
    my $u = utf8::is_utf8($s) ? 'u' : 'b';
    utf8::encode($s) if $u eq 'u';
    $s =~ s/([^\x20-\x7e]|\\|")/sprintf '\\x%02x', ord $1/ge;
    $s = substr($s, 0, 120) . '...(' . length($s) . ' bytes, md5 ' . Digest::MD5::md5_hex($s) . ')'
        if length $s > 400;
    return qq{$u"$s"};
}

sub canon {
    my ($x) = @_;
    return 'undef' unless defined $x;
    return canon_str($x) unless ref $x;
    my $class = Scalar::Util::blessed($x);
    my $pre = defined $class ? "bless($class)" : '';
    my $t = Scalar::Util::reftype($x);
    return $pre . '[' . join(',', map { canon($_) } @$x) . ']' if $t eq 'ARRAY';
    return $pre . '{' . join(',', sort map { canon_str($_) . '=>' . canon($x->{$_}) } keys %$x) . '}' if $t eq 'HASH';
    return $pre . '\\' . canon($$x) if $t eq 'SCALAR' || $t eq 'REF';
    return $pre . "<$t>";
}

# The result of one op (a list, or ['DIED', message]); get_keys results
# become sorted sets because their order is not part of the contract.
sub canon_result {
    my ($op, $res) = @_;
    return 'no result' unless ref $res eq 'ARRAY';
    if (my $set = as_set($op, $res)) {
        return 'set{ ' . join(' | ', @$set) . ' }';
    }
    return canon($res);
}

sub as_set {
    my ($op, $res) = @_;
    return undef unless $op->[0] eq 'keys' && ref $res eq 'ARRAY' && @$res == 1 && ref $res->[0] eq 'ARRAY';
    return [ sort map { canon($_) } @{ $res->[0] } ];
}

# Readable description of a mismatch: for sets, only the differing members.
sub describe_mismatch {
    my ($op, $ours, $ref, $a, $b) = @_;
    my ($sa, $sb) = (as_set($op, $ours), as_set($op, $ref));
    return "    ours: $a\n    1.57: $b" unless $sa && $sb;
    my (%ca, %cb);
    $ca{$_}++ for @$sa;
    $cb{$_}++ for @$sb;
    my @only_a = grep { !$cb{$_} } @$sa;
    my @only_b = grep { !$ca{$_} } @$sb;
    return join "\n", "    (get_keys results with " . @$sa . " and " . @$sb . " members)",
        (map { "    only ours: $_" } @only_a), (map { "    only 1.57: $_" } @only_b);
}

# ---------------------------------------------------------------------------
# Run both sides and compare.
# ---------------------------------------------------------------------------
my @rounds = map { make_round($SEED0 + $_) } 0 .. $ROUNDS - 1;
my $ops_file = File::Spec->catfile($dir, 'ops.sto');
my $res_file = File::Spec->catfile($dir, 'ref.sto');
Storable::nstore(\@rounds, $ops_file);

my ($rc, $oracle_out) = run_oracle('run', $dir, $ops_file, $res_file);
if ($rc != 0 || !-s $res_file) {
    fail('the 1.57 oracle process ran');
    diag "oracle exit status $rc; output:\n$oracle_out";
    done_testing;
    exit 0;
}
diag "oracle said: $oracle_out" if length $oracle_out;
my $theirs = Storable::retrieve($res_file);
is(scalar @$theirs, $ROUNDS, 'the oracle returned results for every seed');

eval $RUNNER;
die $@ if $@;
# Our side reads the very same file the oracle read.
my $inputs = Storable::retrieve($ops_file);

for my $i (0 .. $#$inputs) {
    my $round = $inputs->[$i];
    my $ours = Storable::dclone(DiffRunner::run_round($round, $dir));
    my $ref = $theirs->[$i] || [];
    my @bad;
    my ($gets, $hits) = (0, 0);
    for my $j (0 .. $#{ $round->{ops} }) {
        my $op = $round->{ops}[$j];
        my $a = canon_result($op, $ours->[$j]);
        my $b = canon_result($op, $ref->[$j]);
        if ($op->[0] eq 'get') { $gets++; $hits++ if ref $ref->[$j] && defined $ref->[$j][0] }
        next if $a eq $b;
        push @bad, "seed $round->{seed} op $j " . canon($op) . ":\n"
            . describe_mismatch($op, $ours->[$j], $ref->[$j], $a, $b);
    }
    my $seed = $round->{seed};
    if (@bad && $ENV{FASTMMAP_DIFF_TRACE}) {
        my $t = File::Spec->catfile($ENV{FASTMMAP_DIFF_TRACE}, "seed-$seed.txt");
        if (open my $fh, '>', $t) {
            print $fh 'opts ', canon($round->{opts}), "\n";
            for my $j (0 .. $#{ $round->{ops} }) {
                my ($a, $b) = map { canon_result($round->{ops}[$j], $_->[$j]) } $ours, $ref;
                print $fh "$j ", canon($round->{ops}[$j]), "\n    ours: $a\n",
                    ($a eq $b ? '' : "    1.57: $b   <<<<<< MISMATCH\n");
            }
            close $fh;
            diag "trace written to $t";
        }
    }
    ok(!@bad, "seed $seed (" . ($round->{opts}{serializer} || 'raw') . " serializer"
        . ($round->{opts}{expire_time} ? ", expire_time $round->{opts}{expire_time}" : '')
        . "): " . scalar(@{ $round->{ops} }) . ' ops agree with 1.57')
        or diag join "\n", (@bad > 10 ? (@bad[0 .. 9], '... ' . (@bad - 10) . ' more mismatches') : @bad);
    # The sequence must have exercised something: both hits and misses.
    ok($gets && $hits && $hits < $gets, "seed $seed: the sequence had get hits and misses ($hits of $gets)");
}

done_testing;
