#!/usr/bin/perl
#
# bench/bench.pl -- throughput benchmark for the Rust-core Cache::FastMmap.
#
# Measures, in one run and interleaved repetition by repetition:
#   ours      this checkout's build, loaded from blib/ (after perl Makefile.PL && make)
#   upstream  Debian's Cache::FastMmap (libcache-fastmmap-perl), driven in a
#             separate perl process whose @INC does not contain this checkout
#   shm       Hash::SharedMem (libhash-sharedmem-perl), functional API
#   noop      $cache->_xs_noop(...): one empty XS method call, same loop shape
#   loop      the same loop with the call replaced by a plain assignment
#
# See bench/README for what the numbers mean.  Options:
#   --quick          100 B values only, 3 repetitions (well under a minute)
#   --json           print one JSON document instead of tables
#   --reps=N         repetitions per measurement (median is reported; default 5)
#   --min-time=S     minimum seconds per repetition (default 0.2)
#   --sizes=A,B,C    value sizes in bytes (default 10,100,1024)
#   --keys=N         distinct keys (default 4096)
#   --no-upstream    do not start the upstream process
#   --no-shm         skip Hash::SharedMem
#   --no-multi       skip the 1-process / 2-process runs
#   --time-limit=S   give up after S seconds (default 1800)
#
# Per-operation suite (issue 12; see bench/README "Per-operation suite"):
#   --no-ops         skip it;  --ops-only: run only it
#   --dhms=DIR       Data::HashMap::Shared built in DIR (default $FASTMMAP_BENCH_DHMS)
#   --ops-keys=N     keys of the small key space (default 25000)
#   --big-keys=N     keys in the 1 GiB cache (default 1000000; 0 skips it)
#   --ops-rounds=N   interleaved rounds (default 8, --quick 4)
#   --ops-time=S     CPU seconds per measurement (default 0.15, --quick 0.05)
#   --no-callgrind   no instruction counts even where valgrind is installed
#   --no-cache-sim   instructions only, no simulated cache misses
#   --cg-ops=N       operations per callgrind count (default 2000, --quick 1000)
#   --cg-impls=LIST  implementations counted (default ours,dhms,upstream;
#                    --quick ours,dhms)
#
# Internal: --impl=upstream --server runs the upstream side; it reads one JSON
# command per line on stdin and answers one JSON line per command on stdout.

use strict;
use warnings;
use Cwd ();
use File::Basename ();
use File::Spec ();
use File::Temp ();
use Getopt::Long ();
use IPC::Open2 ();
use JSON::PP ();
use POSIX ();
use Time::HiRes ();

my %opt = (
    reps         => undef,
    'min-time'   => 0.2,
    sizes        => undef,
    keys         => 4096,
    impl         => 'ours',
    'time-limit' => 1800,
    dhms         => $ENV{FASTMMAP_BENCH_DHMS},
    'ops-keys'   => 25_000,
    'big-keys'   => 1_000_000,
);
Getopt::Long::GetOptions(\%opt,
    'quick', 'json', 'reps=i', 'min-time=f', 'sizes=s', 'keys=i', 'impl=s',
    'server', 'no-upstream', 'no-shm', 'no-multi', 'time-limit=i', 'help|h',
    'no-ops', 'ops-only', 'dhms=s', 'ops-keys=i', 'big-keys=i', 'ops-rounds=i', 'ops-time=f',
    'no-callgrind', 'no-cache-sim', 'cg-ops=i', 'cg-impls=s',
) or die "usage: perl bench/bench.pl [--quick] [--json] [--reps=N] [--min-time=S]\n";
if ($opt{help}) {
    print "usage: perl bench/bench.pl [--quick] [--json] [--reps=N] [--min-time=S]\n"
        . "       [--sizes=10,100,1024] [--keys=N] [--no-upstream] [--no-shm] [--no-multi]\n"
        . "       [--no-ops | --ops-only] [--dhms=DIR] [--ops-keys=N] [--big-keys=N]\n"
        . "       [--ops-rounds=N] [--ops-time=S] [--no-callgrind] [--no-cache-sim]\n"
        . "       [--cg-ops=N] [--cg-impls=ours,dhms,upstream]\n"
        . "See bench/README.\n";
    exit 0;
}
$opt{reps}  //= $opt{quick} ? 3 : 5;
$opt{sizes} //= $opt{quick} ? '100' : '10,100,1024';
$opt{reps} = 1 if $opt{reps} < 1;
$opt{'ops-rounds'} //= $opt{quick} ? 4 : 8;
$opt{'ops-time'}   //= $opt{quick} ? 0.05 : 0.15;
$opt{'cg-ops'}     //= $opt{quick} ? 1000 : 2000;
$opt{'cg-impls'}   //= $opt{quick} ? 'ours,dhms' : 'ours,dhms,upstream';
die "--no-ops and --ops-only exclude each other\n" if $opt{'no-ops'} && $opt{'ops-only'};
die "--ops-keys must be between 1000 and 1000000\n"
    unless $opt{'ops-keys'} >= 1000 && $opt{'ops-keys'} <= 1_000_000;
die "--cg-ops must be between 100 and --ops-keys / 3\n"
    unless $opt{'cg-ops'} >= 100 && 3 * $opt{'cg-ops'} <= $opt{'ops-keys'};
$opt{'min-time'} = 0.01 if $opt{'min-time'} < 0.01;
die "--keys must be between 16 and 65536\n" unless $opt{keys} >= 16 && $opt{keys} <= 65536;
my @SIZES = grep { /^\d+$/ && $_ <= 16384 } split /,/, $opt{sizes};
die "--sizes: give sizes in bytes, each <= 16384\n" unless @SIZES;

my $ROOT = Cwd::abs_path(File::Spec->catdir(
    File::Basename::dirname(Cwd::abs_path(__FILE__)), File::Spec->updir));

# Cache geometry shared by every implementation: 89 pages of 128 KB = 11.1 MB.
use constant NUM_PAGES => 89;
use constant PAGE_SIZE => 131072;
# Length of the precomputed key sequences (one pass of the inner loop).
use constant SEQ_LEN   => 16384;
# Per-child target duration of a multi-process repetition.
my $MP_TIME = $opt{quick} ? 0.25 : 0.5;

sub _under {
    my ($path, $dir) = @_;
    return 0 unless defined $path && defined $dir;
    my $p = Cwd::abs_path($path) // return 0;
    my $d = Cwd::abs_path($dir)  // return 0;
    return index("$p/", "$d/") == 0 ? 1 : 0;
}

# ---------------------------------------------------------------- timed loops
#
# Every measured loop is generated from one of two templates so that all the
# implementations (and the noop / empty-loop baselines) run exactly the same
# loop shape; only the body differs.  Each returns elapsed seconds for
# $reps passes over @$keys.

my %TEMPLATE = (
    simple => <<'EOT',
sub {
    my ($c, $keys, $reps, $v, $inc, $w) = @_;
    my $x;
    my $t0 = Time::HiRes::time();
    for my $r (1 .. $reps) {
        for my $k (@$keys) { BODY }
    }
    return Time::HiRes::time() - $t0;
}
EOT
    mixed => <<'EOT',
sub {
    my ($c, $keys, $reps, $v, $inc, $w) = @_;
    my $x;
    my $t0 = Time::HiRes::time();
    for my $r (1 .. $reps) {
        my $i = 0;
        for my $k (@$keys) { if ($w->[$i++]) { SETBODY } else { GETBODY } }
    }
    return Time::HiRes::time() - $t0;
}
EOT
);

# workload => [ shape, { kind => body } ]; kind: fm (either Cache::FastMmap),
# shm, noop, loop.
my %BODY = (
    get_hit  => [ simple => {
        fm   => '$x = $c->get($k);',
        shm  => '$x = Hash::SharedMem::shash_get($c, $k);',
        noop => '$x = $c->_xs_noop($k);',
        loop => '$x = $k;' } ],
    set      => [ simple => {
        fm   => '$c->set($k, $v);',
        shm  => 'Hash::SharedMem::shash_set($c, $k, $v);',
        noop => '$c->_xs_noop($k, $v);',
        loop => '$x = $k;' } ],
    gas      => [ simple => {
        fm   => '$x = $c->get_and_set($k, $inc);',
        noop => '$x = $c->_xs_noop($k, $inc);',
        loop => '$x = $k;' } ],
    rmset    => [ simple => {
        fm   => '$c->remove($k); $c->set($k, $v);',
        noop => '$c->_xs_noop($k); $c->_xs_noop($k, $v);',
        loop => '$x = $k;' } ],
    mixed    => [ mixed => {
        fm   => [ '$c->set($k, $v);', '$x = $c->get($k);' ],
        shm  => [ 'Hash::SharedMem::shash_set($c, $k, $v);',
                  '$x = Hash::SharedMem::shash_get($c, $k);' ],
        noop => [ '$c->_xs_noop($k, $v);', '$x = $c->_xs_noop($k);' ],
        loop => [ '$x = $k;', '$x = $k;' ] } ],
);
$BODY{get_miss} = $BODY{get_hit};
# The same calls on caches with callbacks (see %VARIANT_OF): a read-through
# cache's hits and a write-back cache's sets need no callback.
$BODY{get_hit_rcb} = $BODY{get_hit};
$BODY{set_wb}      = $BODY{set};

# The loop shape a workload's noop/loop baseline is measured with.
my %SHAPE_OF = (get_hit => 'get', get_miss => 'get', set => 'set', gas => 'gas',
                rmset => 'rmset', mixed => 'mixed', get_hit_rcb => 'get', set_wb => 'set');
# Workloads run on a cache with callbacks: variant => extra constructor args.
my %VARIANT_OF = (get_hit_rcb => 'rcb', set_wb => 'wb');
my %VARIANT_ARGS = (
    plain => [],
    rcb   => [read_cb => sub { undef }],
    wb    => [write_cb => sub { }, write_action => 'write_back'],
);

my %LOOP_CACHE;
sub loop_sub {
    my ($workload, $kind) = @_;
    return $LOOP_CACHE{"$workload/$kind"} //= do {
        my ($shape, $bodies) = @{ $BODY{$workload} };
        my $b = $bodies->{$kind} // die "no $kind body for $workload\n";
        my $src = $TEMPLATE{$shape};
        if ($shape eq 'mixed') {
            $src =~ s/SETBODY/$b->[0]/;
            $src =~ s/GETBODY/$b->[1]/;
        }
        else {
            $src =~ s/BODY/$b/;
        }
        my $sub = eval $src;   ## no critic (string eval: generated loop)
        die "loop for $workload/$kind does not compile: $@" unless $sub;
        $sub;
    };
}

# ---------------------------------------------------------------- workload data

# Key sequences.  Built in the main process from a fixed seed and shipped to
# the upstream process, so both sides time identical sequences.
sub make_data {
    my ($nkeys) = @_;
    srand(20240601);
    my @ids = (0 .. $nkeys - 1);
    my $shuffle = sub {
        my @a = @_;
        for (my $i = $#a; $i > 0; $i--) {
            my $j = int rand($i + 1);
            @a[$i, $j] = @a[$j, $i];
        }
        return @a;
    };
    my (@uniform, @miss);
    while (@uniform < SEQ_LEN) {
        push @uniform, map { "key:$_" } $shuffle->(@ids);
        push @miss,    map { "nokey:$_" } $shuffle->(@ids);
    }
    $#uniform = $#miss = SEQ_LEN - 1;

    # Zipf (s = 1) over the keys, rank r -> a random key id, so that the hot
    # keys are spread over the pages.  Inverse CDF by binary search.
    my @perm = $shuffle->(@ids);
    my @cdf;
    my $sum = 0;
    for my $r (1 .. $nkeys) { $sum += 1 / $r; push @cdf, $sum }
    $_ /= $sum for @cdf;
    my (@zipf, @write);
    for (1 .. SEQ_LEN) {
        my $u = rand;
        my ($lo, $hi) = (0, $nkeys - 1);
        while ($lo < $hi) {
            my $mid = ($lo + $hi) >> 1;
            if ($cdf[$mid] < $u) { $lo = $mid + 1 } else { $hi = $mid }
        }
        push @zipf, "key:$perm[$lo]";
        push @write, rand() < 0.10 ? 1 : 0;
    }
    return {
        nkeys   => $nkeys,
        all     => [ map { "key:$_" } @ids ],
        uniform => \@uniform,
        miss    => \@miss,
        zipf    => \@zipf,
        write   => \@write,
    };
}

my $DATA;          # set by main / by the server's init command
my $TMP;           # private temp dir of this process
my %FM;            # serializer => Cache::FastMmap object
my $SHM;           # Hash::SharedMem handle
my $SHM_DIR;
my $INC = sub { ($_[1] || 0) + 1 };

sub fm_args {
    my ($ser, $file, $init) = @_;
    return (
        share_file => $file,
        init_file  => $init,
        num_pages  => NUM_PAGES,
        page_size  => PAGE_SIZE,
        ($ser eq 'raw' ? (serializer => '') : ()),   # storable: the default
        ($init ? () : (unlink_on_exit => 0)),
    );
}

sub fm_cache {
    my ($ser, $variant) = @_;
    $variant //= 'plain';
    return $FM{"$ser/$variant"} //= do {
        my $file = File::Spec->catfile($TMP, "cache-$ser-$variant");
        my $c = Cache::FastMmap->new(fm_args($ser, $file, 1), unlink_on_exit => 1,
                                     @{ $VARIANT_ARGS{$variant} });
        $c;
    };
}

sub shm_handle {
    return $SHM //= do {
        $SHM_DIR = File::Spec->catdir($TMP, 'shash');
        Hash::SharedMem::shash_open($SHM_DIR, 'rwc');
    };
}

sub keys_for {
    my ($workload) = @_;
    return $DATA->{miss} if $workload eq 'get_miss';
    return $DATA->{zipf} if $workload eq 'mixed';
    return $DATA->{uniform};
}

# Put the cache in the state the workload expects (outside the timed loop).
sub prepare {
    my ($impl, $workload, $ser, $size) = @_;
    my $v = $workload eq 'gas' ? 0 : 'v' x $size;
    if ($impl eq 'shm') {
        my $h = shm_handle();
        Hash::SharedMem::shash_set($h, $_, $v) for @{ $DATA->{all} };
        return $h;
    }
    my $c = fm_cache($ser, $VARIANT_OF{$workload});
    if ($impl eq 'noop' || $impl eq 'loop') {
        return $c;
    }
    $c->clear;
    $c->set($_, $v) for @{ $DATA->{all} };
    return $c;
}

# One measurement: returns { secs, ops }.
sub measure_local {
    my ($impl, $workload, $ser, $size, $reps) = @_;
    my $c = prepare($impl, $workload, $ser, $size);
    my $kind = $impl eq 'shm' ? 'shm' : ($impl eq 'noop' || $impl eq 'loop') ? $impl : 'fm';
    my $sub = loop_sub($workload, $kind);
    my $keys = keys_for($workload);
    my $v = 'v' x $size;
    my $secs = $sub->($c, $keys, $reps, $v, $INC, $DATA->{write});
    return { secs => $secs, ops => $reps * scalar(@$keys) };
}

# Mixed workload in $nprocs forked processes that each open their own handle.
# Aggregate ops/s = all operations / (last end - first start).
sub measure_multi {
    my ($impl, $nprocs, $reps) = @_;
    my $c = prepare($impl, 'mixed', 'raw', 100);
    my $open = $impl eq 'shm'
        ? sub { Hash::SharedMem::shash_open($SHM_DIR, 'rw') }
        : sub { Cache::FastMmap->new(fm_args('raw', File::Spec->catfile($TMP, 'cache-raw'), 0)) };
    my $sub = loop_sub('mixed', $impl eq 'shm' ? 'shm' : 'fm');
    pipe(my $go_r, my $go_w) or die "pipe: $!";
    pipe(my $res_r, my $res_w) or die "pipe: $!";
    my @pids;
    for my $n (0 .. $nprocs - 1) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if (!$pid) {
            my $rc = 1;
            eval {
                $SIG{ALRM} = 'DEFAULT';
                alarm(120);
                close $go_w;
                close $res_r;
                my $h = $open->();
                # each process starts at a different point of the sequence
                my $shift = int($n * SEQ_LEN / $nprocs);
                my @keys  = @{ $DATA->{zipf} };
                my @write = @{ $DATA->{write} };
                push @keys,  splice(@keys, 0, $shift);
                push @write, splice(@write, 0, $shift);
                my $buf;
                sysread($go_r, $buf, 1);    # EOF when the parent releases us
                my $t0 = Time::HiRes::time();
                $sub->($h, \@keys, $reps, 'v' x 100, $INC, \@write);
                my $t1 = Time::HiRes::time();
                syswrite($res_w, sprintf("%d %.6f %.6f\n", $$, $t0, $t1));
                $rc = 0;
                1;
            } or print STDERR "bench child $$: $@";
            POSIX::_exit($rc);
        }
        push @pids, $pid;
    }
    close $go_r;
    close $res_w;
    Time::HiRes::sleep(0.05);
    close $go_w;                               # release all children at once
    my ($start, $end, $done) = (undef, undef, 0);
    my $deadline = Time::HiRes::time() + 150;
    while (my $line = <$res_r>) {
        my (undef, $t0, $t1) = split ' ', $line;
        $start = $t0 if !defined $start || $t0 < $start;
        $end   = $t1 if !defined $end   || $t1 > $end;
        $done++;
        last if $done == $nprocs;
    }
    close $res_r;
    for my $pid (@pids) {
        while (1) {
            my $r = waitpid($pid, POSIX::WNOHANG());
            last if $r == $pid || $r == -1;
            if (Time::HiRes::time() > $deadline) { kill 'KILL', $pid; waitpid($pid, 0); last }
            Time::HiRes::sleep(0.02);
        }
    }
    die "only $done of $nprocs benchmark children reported\n" unless $done == $nprocs;
    my $ops = $nprocs * $reps * SEQ_LEN;
    return { secs => $end - $start, ops => $ops };
}

sub cleanup_local {
    %FM = ();
    undef $SHM;
}

# ---------------------------------------------------------------- upstream side

sub server_main {
    $| = 1;
    my $json = JSON::PP->new->canonical;
    my $reply = sub { print $json->encode($_[0]), "\n" };
    # Never see this checkout: drop anything under it from @INC.
    @INC = grep { ref($_) || !_under($_, $ROOT) } @INC;
    my $ok = eval { require Cache::FastMmap; 1 };
    if (!$ok) {
        $reply->({ ok => 0, error => "cannot load Cache::FastMmap: " . (split /\n/, $@)[0] });
        return 0;
    }
    my $pm = $INC{'Cache/FastMmap.pm'};
    if (defined $Cache::FastMmap::IMPLEMENTATION || _under($pm, $ROOT)) {
        $reply->({ ok => 0, error => "loaded $pm, which is not the upstream C build" });
        return 0;
    }
    $TMP = File::Temp::tempdir('fmbench-up-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $reply->({ ok => 1, version => $Cache::FastMmap::VERSION, path => $pm, pid => $$ });
    while (my $line = <STDIN>) {
        my $cmd = eval { $json->decode($line) };
        if (!$cmd) { $reply->({ ok => 0, error => "bad command" }); next }
        my $c = $cmd->{cmd} // '';
        if ($c eq 'quit') {
            cleanup_local();
            $reply->({ ok => 1 });
            return 0;
        }
        my $r;
        eval {
            if ($c eq 'init') {
                $DATA = $cmd->{data};
                $r = { ok => 1 };
            }
            elsif ($c eq 'measure') {
                $r = measure_local('upstream', @$cmd{qw(workload ser size reps)});
            }
            elsif ($c eq 'multi') {
                $r = measure_multi('upstream', @$cmd{qw(nprocs reps)});
            }
            else { die "unknown command $c\n" }
            1;
        } or $r = { ok => 0, error => "$@" };
        $r->{ok} //= 1;
        $reply->($r);
    }
    cleanup_local();
    return 0;
}

if ($opt{impl} eq 'upstream') {
    die "--impl=upstream is internal (used with --server)\n" unless $opt{server};
    exit server_main();
}
die "unknown --impl=$opt{impl}\n" unless $opt{impl} eq 'ours';

# ---------------------------------------------------------------- main side

# Our build, from this checkout's blib.
unshift @INC, "$ROOT/blib/lib", "$ROOT/blib/arch";
eval { require Cache::FastMmap; 1 }
    or die "cannot load Cache::FastMmap from $ROOT/blib (run perl Makefile.PL && make): $@";
{
    my $pm = $INC{'Cache/FastMmap.pm'};
    die "loaded Cache::FastMmap from $pm, not from $ROOT/blib/lib "
        . "(run perl Makefile.PL && make first)\n" unless _under($pm, "$ROOT/blib/lib");
    die "\$Cache::FastMmap::IMPLEMENTATION is not 'rust': not our build\n"
        unless ($Cache::FastMmap::IMPLEMENTATION // '') eq 'rust';
}

my $HAVE_SHM = !$opt{'no-shm'} && eval { require Hash::SharedMem; 1 } ? 1 : 0;
my $SHM_WHY  = $opt{'no-shm'} ? 'disabled with --no-shm'
             : $HAVE_SHM ? '' : 'Hash::SharedMem not installed (apt-get install libhash-sharedmem-perl)';

sub slurp { my ($f) = @_; open(my $fh, '<', $f) or return ''; local $/; my $s = <$fh>; $s }

# Aggregate CPU counters from /proc/stat: (busy, steal, total) jiffies.
sub cpu_stat {
    my ($line) = split /\n/, slurp('/proc/stat');
    my (undef, @f) = split ' ', ($line // '');
    return unless @f >= 8;
    my $total = 0;
    $total += $_ for @f[0 .. 7];
    return { busy => $total - $f[3] - $f[4], steal => $f[7], total => $total };
}

sub machine_info {
    my $cpuinfo = slurp('/proc/cpuinfo');
    my ($model) = $cpuinfo =~ /^model name\s*:\s*(.*)$/m;
    my $cpus = () = $cpuinfo =~ /^processor\s*:/mg;
    my $nproc = `nproc 2>/dev/null`;
    chomp $nproc if defined $nproc;
    my ($load) = split /\n/, slurp('/proc/loadavg');
    my @u = POSIX::uname();
    return {
        nproc    => ($nproc && $nproc =~ /^\d+$/ ? 0 + $nproc : $cpus),
        cpu      => $model // 'unknown',
        perl     => sprintf('%vd', $^V),
        perl_bin => $^X,
        load     => join(' ', (split ' ', $load // '')[0 .. 2]),
        kernel   => "$u[0] $u[2] $u[4]",
        date     => POSIX::strftime('%Y-%m-%d %H:%M:%S %Z', localtime),
        ours     => "$Cache::FastMmap::VERSION ($Cache::FastMmap::IMPLEMENTATION) from $INC{'Cache/FastMmap.pm'}",
        shm      => $HAVE_SHM ? "Hash::SharedMem $Hash::SharedMem::VERSION" : "not measured: $SHM_WHY",
    };
}

my $deadline_pid;
my ($up_pid, $up_out, $up_in);
my $json = JSON::PP->new->canonical;

sub up_call {
    my ($cmd) = @_;
    print {$up_in} $json->encode($cmd), "\n";
    my $line = <$up_out>;
    die "upstream process went away\n" unless defined $line;
    my $r = $json->decode($line);
    die "upstream: $r->{error}\n" unless $r->{ok};
    return $r;
}

sub stop_upstream {
    return unless $up_pid;
    eval { print {$up_in} $json->encode({ cmd => 'quit' }), "\n"; close $up_in; 1 };
    my $end = Time::HiRes::time() + 10;
    while (waitpid($up_pid, POSIX::WNOHANG()) == 0) {
        if (Time::HiRes::time() > $end) { kill 'KILL', $up_pid; waitpid($up_pid, 0); last }
        Time::HiRes::sleep(0.02);
    }
    undef $up_pid;
}

my $MAIN_PID = $$;
$SIG{INT} = $SIG{TERM} = sub { die "interrupted\n" };
$SIG{ALRM} = sub { die "time limit of $opt{'time-limit'} s reached\n" };
END { if (defined $MAIN_PID && $$ == $MAIN_PID) { local $?; stop_upstream(); cleanup_local() } }
alarm($opt{'time-limit'});

my $machine = machine_info();
my $STAT0 = cpu_stat();
$TMP = File::Temp::tempdir('fmbench-XXXXXX', TMPDIR => 1, CLEANUP => 1);
$DATA = make_data($opt{keys});

my ($UP_VERSION, $UP_WHY) = (undef, '');
if ($opt{'no-upstream'} || $opt{'ops-only'}) {
    $UP_WHY = $opt{'ops-only'} ? 'not needed with --ops-only' : 'disabled with --no-upstream';
}
else {
    local $ENV{PERL5LIB};  delete $ENV{PERL5LIB};
    local $ENV{PERLLIB};   delete $ENV{PERLLIB};
    local $ENV{PERL5OPT};  delete $ENV{PERL5OPT};
    $up_pid = eval {
        IPC::Open2::open2($up_out, $up_in, $^X, Cwd::abs_path(__FILE__),
            '--impl=upstream', '--server');
    };
    if ($up_pid) {
        my $hello = <$up_out>;
        my $h = defined $hello ? eval { $json->decode($hello) } : undef;
        if ($h && $h->{ok}) {
            $UP_VERSION = $h->{version};
            up_call({ cmd => 'init', data => $DATA });
            $machine->{upstream} = "Cache::FastMmap $h->{version} from $h->{path} (separate perl process)";
        }
        else {
            $UP_WHY = $h ? $h->{error} : 'upstream process did not start';
            stop_upstream();
        }
    }
    else {
        $UP_WHY = "cannot start upstream process: $@";
    }
}
$machine->{upstream} //= "not measured: $UP_WHY";
my $HAVE_UP = defined $UP_VERSION ? 1 : 0;

# ---------------------------------------------------------------- per-operation suite
#
# Issue 12's workloads and targets.  Every implementation -- ours included --
# runs in its own perl process (bench/ops-worker.pl), so none of them shares
# an interpreter, a heap or a cache file with another.  A measurement is the
# thread CPU time of a loop over a key list minus the same loop with an empty
# body, measured right after it in the same process (net ns per op).  Rounds
# alternate the order of the implementations (A B, then B A: ABBA), and every
# ratio is taken within a round, the median over the rounds reported.
# Where valgrind is installed, the same loops run under callgrind once more
# for instructions (and simulated cache misses) per op.

my @OPS_WORKLOADS = qw(insert get hot miss delete set get_rcb set_wb multi_get10 noop get_16m
                       get_1m);
my %OPS_LABEL = (
    insert      => 'insert (new key)',
    get         => 'get pass (each key once)',
    hot         => 'hot get (16 keys)',
    miss        => 'get miss',
    delete      => 'delete',
    set         => 'set (overwrite)',
    get_rcb     => 'get pass, read_cb cache',
    set_wb      => 'set, write-back cache',
    multi_get10 => 'multi_get of 10 (per call)',
    noop        => 'empty XS method call',
    get_16m     => 'get pass, 16 MB cache (diag)',
    get_1m      => 'get pass, 1M keys, 1 GiB',
);
my @OPS_IMPLS = qw(ours upstream dhms);
my %OPS_IMPL_LABEL = (ours => 'ours', upstream => '1.57', dhms => 'DHMS');
# Data::HashMap::Shared's figures from /work/shared/BENCH-ANCHORS.md (ns per
# op net of the loop, its keyword API, measured on the project's machine),
# used for the DHMS targets when it is not built here.
my %DHMS_ANCHOR_NS = (insert => 340, get => 510, hot => 170, miss => 100, delete => 310);
my $WORKER = File::Spec->catfile($ROOT, 'bench', 'ops-worker.pl');

# Runs a command with this checkout's perl settings removed from the
# environment, so that a peer never picks up our build by accident.
sub open2_clean {
    my (@cmd) = @_;
    local $ENV{PERL5LIB};  delete $ENV{PERL5LIB};
    local $ENV{PERLLIB};   delete $ENV{PERLLIB};
    local $ENV{PERL5OPT};  delete $ENV{PERL5OPT};
    my ($out, $in);
    my $pid = eval { IPC::Open2::open2($out, $in, @cmd) };
    return ($pid, $out, $in);
}

sub worker_args {
    my ($impl, $dir) = @_;
    return ($WORKER, "--impl=$impl", "--dir=$dir", "--root=$ROOT",
            "--keys=$opt{'ops-keys'}", "--big-keys=$opt{'big-keys'}",
            ($impl eq 'dhms' ? "--dhms=$opt{dhms}" : ()));
}

sub start_worker {
    my ($impl, $dir) = @_;
    my ($pid, $out, $in) = open2_clean($^X, worker_args($impl, $dir));
    return (undef, "cannot start: $@") unless $pid;
    my $w = { impl => $impl, pid => $pid, out => $out, in => $in };
    my $hello = <$out>;
    my $h = defined $hello ? eval { $json->decode($hello) } : undef;
    if (!$h || !$h->{ok}) {
        stop_worker($w);
        return (undef, 'worker did not start (see its error above)');
    }
    $w->{info} = $h;
    return ($w, '');
}

sub worker_call {
    my ($w, $cmd) = @_;
    print { $w->{in} } $json->encode($cmd), "\n";
    my $line = readline($w->{out});
    die "$w->{impl} worker went away\n" unless defined $line;
    my $r = $json->decode($line);
    die "$w->{impl} worker: $r->{error}" unless $r->{ok};
    return $r;
}

sub stop_worker {
    my ($w) = @_;
    return unless $w && $w->{pid};
    eval { print { $w->{in} } $json->encode({ cmd => 'quit' }), "\n"; close $w->{in}; 1 };
    my $end = Time::HiRes::time() + 20;
    while (waitpid($w->{pid}, POSIX::WNOHANG()) == 0) {
        if (Time::HiRes::time() > $end) { kill 'KILL', $w->{pid}; waitpid($w->{pid}, 0); last }
        Time::HiRes::sleep(0.02);
    }
    delete $w->{pid};
}

# Free space in KiB on the file system holding $dir (POSIX df -P).
sub free_kib {
    my ($dir) = @_;
    my @l = `df -Pk '$dir' 2>/dev/null`;
    return undef unless @l >= 2;
    return (split ' ', $l[1])[3];
}

# The simulated caches for callgrind, from this CPU's sysfs description: L1
# data and instruction caches, and the per-core L2 as the "last level" (a
# VM's CPUID often gives valgrind a nonsensical L3, and the lookups of the
# small key space fit a 32 MB L3 anyway, while L2 misses are what they pay).
# Returns (valgrind options, label of the last-level column).
sub cache_geometry {
    my %c;
    for my $d (glob '/sys/devices/system/cpu/cpu0/cache/index*') {
        my ($lvl, $type, $size, $ways, $line) =
            map { my $v = slurp("$d/$_"); chomp $v; $v }
            qw(level type size ways_of_associativity coherency_line_size);
        my ($kib) = $size =~ /^(\d+)K$/;
        next unless $kib && $ways =~ /^\d+$/ && $line =~ /^\d+$/;
        my $geo = join ',', $kib * 1024, $ways, $line;
        $c{D1} = $geo if $lvl eq '1' && $type eq 'Data';
        $c{I1} = $geo if $lvl eq '1' && $type eq 'Instruction';
        $c{LL} = $geo if $lvl eq '2' && $type eq 'Unified';
    }
    return ([], 'LL') unless $c{D1} && $c{I1} && $c{LL};
    return ([ map { "--$_=$c{$_}" } qw(I1 D1 LL) ], 'L2');
}
my ($CG_CACHE_OPTS, $LL_LABEL) = cache_geometry();

sub have_valgrind {
    for my $d (split /:/, $ENV{PATH} // '') {
        return "$d/valgrind" if -x "$d/valgrind";
    }
    return undef;
}

# Instruction (and cache miss) counts per op under callgrind, one valgrind
# process per implementation for all of its workloads.  Returns
# { workload => { Ir, D1, LL, Ir_loop, ... } } or an error string.
sub callgrind_counts {
    my ($impl, $dir, $workloads) = @_;
    my $vg = have_valgrind() or return 'valgrind not found';
    my $out = File::Spec->catfile($dir, "cg-$impl");
    my $log = "$out.log";
    my @cmd = ($vg, '--tool=callgrind', "--callgrind-out-file=$out",
               '--zero-before=Perl_pp_getppid', '--dump-before=Perl_pp_getpgrp',
               ($opt{'no-cache-sim'} ? () : ('--cache-sim=yes', @$CG_CACHE_OPTS)),
               $^X, worker_args($impl, $dir), "--callgrind=$opt{'cg-ops'}",
               '--workloads=' . join(',', @$workloads));
    my $res = do {
        local $ENV{PERL5LIB};  delete $ENV{PERL5LIB};
        local $ENV{PERLLIB};   delete $ENV{PERLLIB};
        local $ENV{PERL5OPT};  delete $ENV{PERL5OPT};
        open(my $save, '>&', \*STDERR) or die "dup: $!";
        open(STDERR, '>', $log) or die "$log: $!";
        my $r = eval {
            open(my $fh, '-|', @cmd) or die "cannot run valgrind: $!\n";
            local $/;
            my $text = <$fh>;
            close $fh;
            $text;
        };
        open(STDERR, '>&', $save) or die "dup: $!";
        $r;
    };
    my ($last) = reverse grep { /^\{/ } split /\n/, $res // '';
    my $r = defined $last ? eval { $json->decode($last) } : undef;
    return "callgrind run failed (see $log)" unless $r && $r->{ok};
    my (%sum, @events);
    for my $i (1 .. @{ $r->{dumps} }) {
        my $text = slurp("$out.$i");
        my ($ev) = $text =~ /^events:\s*(.*)$/m;
        my ($su) = $text =~ /^summary:\s*(.*)$/m;
        return "callgrind dump $out.$i is missing or incomplete" unless defined $ev && defined $su;
        @events = split ' ', $ev;
        my @v = split ' ', $su;
        my %e = map { $events[$_] => $v[$_] // 0 } 0 .. $#events;
        my $d = $r->{dumps}[ $i - 1 ];
        push @{ $sum{ $d->{workload} }{ $d->{kind} } },
            { ops => $d->{ops}, Ir => $e{Ir},
              D1 => ($e{D1mr} // 0) + ($e{D1mw} // 0), LL => ($e{DLmr} // 0) + ($e{DLmw} // 0),
              sim => exists $e{D1mr} ? 1 : 0 };
    }
    my %per;
    for my $w (keys %sum) {
        my ($b1, $b2) = @{ $sum{$w}{body} };
        my ($e1, $e2) = @{ $sum{$w}{empty} };
        my $n = $b2->{ops} - $b1->{ops};
        for my $k (qw(Ir D1 LL)) {
            next if $k ne 'Ir' && !$b1->{sim};
            my $gross = ($b2->{$k} - $b1->{$k}) / $n;
            my $loop  = ($e2->{$k} - $e1->{$k}) / $n;
            $per{$w}{$k} = $gross - $loop;
            $per{$w}{"${k}_loop"} = $loop;
        }
    }
    return \%per;
}

sub run_ops_suite {
    my %res = (impls => [], why => {}, samples => {}, info => {}, cg => {}, cg_why => {});
    my $dir = File::Spec->catdir($TMP, 'ops');
    mkdir $dir or die "mkdir $dir: $!";
    my @want = @OPS_WORKLOADS;
    if (!$opt{'big-keys'}) {
        $res{skip}{get_1m} = 'skipped with --big-keys=0';
    }
    elsif (defined(my $kib = free_kib($dir))) {
        $res{skip}{get_1m} = sprintf('needs 1 GiB free in %s, only %.0f MiB', $dir, $kib / 1024)
            if $kib < 1.1 * 1024 * 1024;
    }
    @want = grep { !$res{skip}{$_} } @want;

    # workers
    my %wk;
    for my $impl (@OPS_IMPLS) {
        if ($impl eq 'dhms' && !$opt{dhms}) {
            $res{why}{$impl} = 'not measured: give --dhms=DIR or FASTMMAP_BENCH_DHMS (see bench/README)';
            next;
        }
        if ($impl eq 'upstream' && $opt{'no-upstream'}) {
            $res{why}{$impl} = 'disabled with --no-upstream';
            next;
        }
        my ($w, $why) = start_worker($impl, $dir);
        if (!$w) { $res{why}{$impl} = "not measured: $why"; next }
        $wk{$impl} = $w;
        push @{ $res{impls} }, $impl;
        $res{info}{$impl} = "$w->{info}{version} from $w->{info}{path}";
    }
    die "the per-operation suite could not start our worker\n" unless $wk{ours};
    my %can = map { my $i = $_; ($i => { map { $_ => 1 } @{ $wk{$i}{info}{workloads} } }) }
              @{ $res{impls} };
    my @units;   # [impl, workload] in plan order
    for my $w (@want) {
        push @units, map { [ $_, $w ] } grep { $can{$_}{$w} } @{ $res{impls} };
    }

    # build and fill every cache (not timed), then calibrate
    progress("per-operation suite: preparing caches");
    for my $u (@units) {
        my $r = worker_call($wk{ $u->[0] }, { cmd => 'prepare', workload => $u->[1] });
        $res{prepare_secs}{ $u->[1] } = $r->{secs} if $u->[0] eq 'ours' && $u->[1] eq 'get_1m';
        progress(".");
    }
    progress("\nper-operation suite: calibrating");
    my %passes;
    for my $u (@units) {
        my $r = worker_call($wk{ $u->[0] }, { cmd => 'measure', workload => $u->[1], passes => 1 });
        my $n = $r->{body} > 0 ? int($opt{'ops-time'} / $r->{body} + 0.999) : 1;
        $passes{"@$u"} = $n < 1 ? 1 : $n > 10_000 ? 10_000 : $n;
        progress(".");
    }
    progress("\n");
    for my $round (1 .. $opt{'ops-rounds'}) {
        progress("per-operation round $round/$opt{'ops-rounds'}");
        for my $w (@want) {
            my @order = grep { $can{$_}{$w} } @{ $res{impls} };
            @order = reverse @order unless $round % 2;
            for my $impl (@order) {
                my $r = worker_call($wk{$impl},
                    { cmd => 'measure', workload => $w, passes => $passes{"$impl $w"} });
                push @{ $res{samples}{$impl}{$w} }, {
                    net  => 1e9 * ($r->{body} - $r->{empty}) / $r->{ops},
                    loop => 1e9 * $r->{empty} / $r->{ops},
                };
                progress(".");
            }
        }
        progress("\n");
    }
    stop_worker($_) for values %wk;

    # instruction counts
    my %cg_want = map { $_ => 1 } split /,/, $opt{'cg-impls'};
    for my $impl (@{ $res{impls} }) {
        if ($opt{'no-callgrind'}) { $res{cg_why}{$impl} = 'disabled with --no-callgrind'; next }
        if (!have_valgrind())     { $res{cg_why}{$impl} = 'valgrind not installed'; next }
        if (!$cg_want{$impl})     { $res{cg_why}{$impl} = 'not in --cg-impls'; next }
        progress("callgrind: $impl ...");
        my $t = Time::HiRes::time();
        my $r = callgrind_counts($impl, $dir, [ grep { $can{$impl}{$_} } @want ]);
        progress(sprintf(" %.0f s\n", Time::HiRes::time() - $t));
        if (ref $r) { $res{cg}{$impl} = $r } else { $res{cg_why}{$impl} = $r }
    }
    $res{workloads} = \@want;
    return \%res;
}

# Median over the rounds of a per-round ratio f(round) (rounds where f gives
# undef are left out).
sub round_median {
    my ($ops, $f) = @_;
    my @r;
    for my $i (0 .. $opt{'ops-rounds'} - 1) {
        my $v = $f->($i);
        push @r, $v if defined $v;
    }
    return median(\@r);
}

# net ns of impl/workload in round $i
sub ops_net {
    my ($ops, $impl, $w, $i) = @_;
    my $s = $ops->{samples}{$impl}{$w} or return undef;
    return defined $i ? ($s->[$i] ? $s->[$i]{net} : undef) : median([ map { $_->{net} } @$s ]);
}

# time ratio num/den (each [impl, workload, factor]) per round
sub ops_time_ratio {
    my ($ops, $num, $den) = @_;
    return round_median($ops, sub {
        my ($x, $y) = (ops_net($ops, @$num[0, 1], $_[0]), ops_net($ops, @$den[0, 1], $_[0]));
        return undef unless defined $x && defined $y && $x > 0 && $y > 0;
        return ($x * ($num->[2] // 1)) / ($y * ($den->[2] // 1));
    });
}

sub ops_cg {
    my ($ops, $impl, $w, $k) = @_;
    my $c = $ops->{cg}{$impl} or return undef;
    return $c->{$w} ? $c->{$w}{$k // 'Ir'} : undef;
}

sub ops_cg_ratio {
    my ($ops, $num, $den, $k) = @_;
    my ($x, $y) = (ops_cg($ops, @$num[0, 1], $k), ops_cg($ops, @$den[0, 1], $k));
    return undef unless defined $x && defined $y && $y > 0;
    return ($x * ($num->[2] // 1)) / ($y * ($den->[2] // 1));
}

# The issue-12 targets: [name, want (cmp, value), basis, time ratio, instruction
# ratio, the two sides compared ([impl, workload, factor] each)].
sub ops_targets {
    my ($ops) = @_;
    my @t;
    my $add = sub {
        my ($name, $cmp, $want, $basis, $num, $den) = @_;
        my $time = ops_time_ratio($ops, $num, $den);
        my $ir   = ops_cg_ratio($ops, $num, $den);
        push @t, { name => $name, cmp => $cmp, want => $want, basis => $basis,
                   time => $time, instr => $ir, num => $num, den => $den };
    };
    # within ours: smaller is better (num/den <= want)
    $add->('get hit, read_cb cache / plain get', '<=', 1.3, 'instr',
           [ ours => 'get_rcb' ], [ ours => 'get' ]);
    $add->('set, write-back cache / plain set', '<=', 1.5, 'instr',
           [ ours => 'set_wb' ], [ ours => 'set' ]);
    $add->('multi_get of 10 / ten gets', '<=', 1, 'instr',
           [ ours => 'multi_get10' ], [ ours => 'get', 10 ]);
    # peers: how many times faster (peer / ours >= want)
    for my $w (qw(insert get hot miss delete)) {
        my $name = "$OPS_LABEL{$w}: DHMS / ours";
        if ($ops->{samples}{dhms}{$w}) {
            $add->($name, '>=', 1.1, 'time', [ dhms => $w ], [ ours => $w ]);
        }
        else {
            my $o = ops_net($ops, ours => $w);
            push @t, { name => "$OPS_LABEL{$w}: DHMS anchor / ours", cmp => '>=', want => 1.1,
                       basis => 'anchor', time => $o && $o > 0 ? $DHMS_ANCHOR_NS{$w} / $o : undef,
                       num => [ dhms => $w ], den => [ ours => $w ],
                       note => "DHMS not built here: its anchor figure $DHMS_ANCHOR_NS{$w} ns" };
        }
    }
    $add->('get pass: 1.57 / ours', '>=', 15, 'time', [ upstream => 'get' ], [ ours => 'get' ]);
    $add->('1M-key get in 1 GiB / 25k-key get in 64 MB', '<=', 2, 'time',
           [ ours => 'get_1m' ], [ ours => 'get' ]);
    $add->('hot get / empty XS method call (net)', '<=', 2.5, 'time',
           [ ours => 'hot' ], [ ours => 'noop' ]);
    for my $t (@t) {
        my $v = $t->{basis} eq 'instr' ? ($t->{instr} // $t->{time}) : $t->{time};
        $t->{judged_on} = $t->{basis} eq 'instr' && !defined $t->{instr} ? 'time' : $t->{basis};
        $t->{value} = $v;
        $t->{met} = !defined $v ? undef
                  : $t->{cmp} eq '<=' ? ($v <= $t->{want} ? 1 : 0) : ($v >= $t->{want} ? 1 : 0);
    }
    return \@t;
}

sub print_ops {
    my ($ops, $targets) = @_;
    my @impls = @{ $ops->{impls} };
    my $sim = grep { my $c = $ops->{cg}{$_}; $c && grep { defined $_->{D1} } values %$c } @impls;
    print "\nPer-operation suite (issue 12): $opt{'ops-keys'} keys of 10 B, 100 B raw values, "
        . "64 MB cache (1024 x 64 KiB pages)\n";
    print "  $OPS_IMPL_LABEL{$_}: " . ($ops->{info}{$_} // $ops->{why}{$_}) . "\n" for @OPS_IMPLS;
    print "  get_1m: " . ($ops->{skip}{get_1m} // sprintf(
        "%d keys in a 1 GiB cache (16384 x 64 KiB pages), filled in %.1f s (not timed)",
        $opt{'big-keys'}, $ops->{prepare_secs}{get_1m} // 0)) . "\n";
    print "  callgrind: " . join('; ', map { "$OPS_IMPL_LABEL{$_} "
        . ($ops->{cg}{$_} ? 'counted' : $ops->{cg_why}{$_}) } @impls) . "\n";
    printf "  %d interleaved rounds (ABBA), >= %.2f CPU s per measurement; ns = thread CPU time\n"
         . "  per op net of the same loop with an empty body (median over rounds)\n"
         . "  Ir = instructions per op, D1 / %s = simulated L1 data / %s cache misses per op\n"
         . "  (callgrind, %d and %d ops, net of the empty loop too)%s\n\n",
        $opt{'ops-rounds'}, $opt{'ops-time'}, $LL_LABEL,
        $LL_LABEL eq 'L2' ? 'L2 (as the last level)' : 'last-level', $opt{'cg-ops'}, 2 * $opt{'cg-ops'},
        @$CG_CACHE_OPTS ? "\n  caches simulated: " . join(' ', @$CG_CACHE_OPTS) : '';
    my @cols = map { my $i = $_; ([ $i, 'ns' ], [ $i, 'Ir' ], ($sim ? ([ $i, 'D1' ], [ $i, 'LL' ]) : ())) }
               @impls;
    my $hdr = sprintf('%-30s', 'workload') . join('', map {
        sprintf($_->[1] eq 'ns' ? ' | %7s' : ' %6s',
                $_->[1] eq 'ns' ? "$OPS_IMPL_LABEL{$_->[0]} ns"
              : $_->[1] eq 'LL' ? $LL_LABEL : $_->[1]) } @cols);
    print $hdr, "\n", '-' x length($hdr), "\n";
    for my $w (@{ $ops->{workloads} }) {
        my $line = sprintf('%-30s', $OPS_LABEL{$w});
        for my $c (@cols) {
            my ($i, $k) = @$c;
            if ($k eq 'ns') {
                my $v = ops_net($ops, $i, $w);
                $line .= sprintf(' | %7s', defined $v ? sprintf('%.0f', $v) : '-');
            }
            else {
                my $v = ops_cg($ops, $i, $w, $k);
                $v = 0 if defined $v && $k ne 'Ir' && $v < 0 && $v > -0.05;   # counting noise
                $line .= sprintf(' %6s', !defined $v ? '-' : $k eq 'Ir' ? sprintf('%.0f', $v)
                                                              : sprintf('%.2f', $v));
            }
        }
        print "$line\n";
    }
    my $loop = median([ map { $_->{loop} } @{ $ops->{samples}{ours}{get} // [] } ]);
    my $lir  = ops_cg($ops, 'ours', 'get', 'Ir_loop');
    printf "%-30s | %7s %6s\n", 'empty loop (subtracted)', fmt_ns($loop),
        defined $lir ? sprintf('%.0f', $lir) : '-';

    print "\nIssue 12 targets (ratios from this run; time = median of per-round ratios of net CPU ns,\n"
        . "instr = ratio of net instructions; each target is judged on the basis named)\n";
    my $th = sprintf "  %-46s %-7s %7s %7s  %-6s %s\n", 'target', 'want', 'time', 'instr', 'basis', 'result';
    print $th, '  ', '-' x (length($th) - 3), "\n";
    for my $t (@$targets) {
        printf "  %-46s %-7s %7s %7s  %-6s %s\n", $t->{name}, "$t->{cmp} $t->{want}",
            fmt_x($t->{time}), fmt_x($t->{instr}), $t->{judged_on},
            !defined $t->{met} ? 'n/a' : $t->{met} ? 'PASS' : 'MISS';
        print "      $t->{note}\n" if $t->{note};
        next if $t->{met} // 1;
        # where the difference lies, from the counts of both sides
        my @why;
        for my $k (qw(Ir D1 LL)) {
            my $label = $k eq 'LL' ? $LL_LABEL : $k;
            my ($x, $y) = (ops_cg($ops, @{ $t->{num} }[0, 1], $k), ops_cg($ops, @{ $t->{den} }[0, 1], $k));
            next unless defined $x && defined $y;
            $y *= $t->{den}[2] if $t->{den}[2];
            my $f = $k eq 'Ir' ? '%.0f' : '%.2f';
            push @why, sprintf("%s $f vs $f", $label, $x, $y);
        }
        my ($na, $nb) = (ops_net($ops, @{ $t->{num} }[0, 1]), ops_net($ops, @{ $t->{den} }[0, 1]));
        $nb *= $t->{den}[2] if defined $nb && $t->{den}[2];
        unshift @why, sprintf('ns %.0f vs %.0f', $na, $nb) if defined $na && defined $nb;
        printf "      measured per op (%s vs %s%s): %s\n",
            "$OPS_IMPL_LABEL{ $t->{num}[0] } $t->{num}[1]",
            "$OPS_IMPL_LABEL{ $t->{den}[0] } $t->{den}[1]", $t->{den}[2] ? " x $t->{den}[2]" : '',
            @why ? join(', ', @why) : 'no counts';
    }
    print "  Lookups take no page lock (the access time moves on by a compare-and-swap of the\n"
        . "  slot), so the 1M pass costs the instructions of the 25k one; what it adds is memory.\n"
        . "  Callgrind counts repeat a read loop once before counting it (except the 1M pass).\n";
}

# ---------------------------------------------------------------- plan

my @WORKLOADS = qw(set get_hit get_miss mixed gas rmset get_hit_rcb set_wb);
my %LABEL = (set => 'set', get_hit => 'get (hit)', get_miss => 'get (miss)',
             mixed => 'mixed 90/10 zipf', gas => 'get_and_set +1', rmset => 'remove+set',
             get_hit_rcb => 'get hit, read_cb', set_wb => 'set, write-back');
my %SHM_OK = map { $_ => 1 } qw(set get_hit get_miss mixed);

my @cases;   # { workload, ser, size, id }
for my $ser ($opt{'ops-only'} ? () : qw(raw storable)) {
    for my $w (@WORKLOADS) {
        for my $size ($w eq 'gas' ? (0) : @SIZES) {
            push @cases, { workload => $w, ser => $ser, size => $size,
                           id => "$w/$ser/$size" };
        }
    }
}

# A unit is one thing to time: [impl, workload, ser, size].
# The noop/loop baselines of a loop shape are timed next to the first case
# that uses the shape, so that they share its slice of time within a round.
my @units;
my %seen_shape;
for my $c (@cases) {
    my $w = $c->{workload};
    push @units, [ noop => $w, 'raw', 100 ], [ loop => $w, 'raw', 100 ]
        unless $seen_shape{ $SHAPE_OF{$w} }++;
    push @units, [ ours => @$c{qw(workload ser size)} ];
    push @units, [ upstream => @$c{qw(workload ser size)} ] if $HAVE_UP;
    push @units, [ shm => @$c{qw(workload ser size)} ]
        if $HAVE_SHM && $c->{ser} eq 'raw' && $SHM_OK{ $c->{workload} };
}

sub unit_key { join '/', @{ $_[0] } }

sub run_unit {
    my ($u, $reps) = @_;
    my ($impl, @rest) = @$u;
    return up_call({ cmd => 'measure', workload => $rest[0], ser => $rest[1],
                     size => $rest[2], reps => $reps }) if $impl eq 'upstream';
    return measure_local($impl, @rest, $reps);
}

sub progress { print STDERR @_ unless $opt{json} && !-t STDERR }

# Calibration: how many passes over the key sequence make one repetition last
# at least --min-time seconds.
my %REPS;
progress("calibrating ", scalar(@units), " measurements");
for my $u (@units) {
    my $n = 1;
    while (1) {
        my $r = run_unit($u, $n);
        my $t = $r->{secs};
        if ($t >= $opt{'min-time'} * 0.25 || $n >= 100_000) {
            my $want = $t > 0 ? $opt{'min-time'} * 1.15 / $t * $n : $n * 2;
            $REPS{ unit_key($u) } = $want < 1 ? 1 : int($want + 0.999);
            last;
        }
        $n = $t > 0 ? int($n * $opt{'min-time'} * 0.3 / $t) + 1 : $n * 10;
        $n = 100_000 if $n > 100_000;
    }
    progress(".");
}
progress("\n");

# Repetitions, interleaved: every unit once per round.
my %SAMPLES;
for my $round (1 .. $opt{reps}) {
    progress("round $round/$opt{reps}");
    for my $u (@units) {
        my $r = run_unit($u, $REPS{ unit_key($u) });
        push @{ $SAMPLES{ unit_key($u) } }, $r->{ops} / $r->{secs};
        progress(".");
    }
    progress("\n");
}

# Multi-process mixed workload (raw, 100 B values).
my %MULTI;     # impl => { 1 => [...], 2 => [...] }
my @MP_IMPLS = ('ours', ($HAVE_UP ? 'upstream' : ()), ($HAVE_SHM ? 'shm' : ()));
if (!$opt{'no-multi'} && !$opt{'ops-only'}) {
    progress("multi-process rounds");
    my %mpreps;
    for my $impl (@MP_IMPLS) {
        my $sp = median($SAMPLES{"$impl/mixed/raw/100"});
        if (!defined $sp) {    # 100 B not in --sizes: calibrate directly
            my $r = $impl eq 'upstream'
                ? up_call({ cmd => 'measure', workload => 'mixed', ser => 'raw', size => 100, reps => 2 })
                : measure_local($impl, 'mixed', 'raw', 100, 2);
            $sp = $r->{ops} / $r->{secs};
        }
        my $n = int($MP_TIME * $sp / SEQ_LEN + 0.999);
        $mpreps{$impl} = $n < 1 ? 1 : $n;
    }
    for my $round (1 .. $opt{reps}) {
        for my $impl (@MP_IMPLS) {
            for my $np (1, 2) {
                my $r = $impl eq 'upstream'
                    ? up_call({ cmd => 'multi', nprocs => $np, reps => $mpreps{$impl} })
                    : measure_multi($impl, $np, $mpreps{$impl});
                push @{ $MULTI{$impl}{$np} }, $r->{ops} / $r->{secs};
                progress(".");
            }
        }
    }
    progress("\n");
}
stop_upstream();
my $OPS = $opt{'no-ops'} ? undef : run_ops_suite();
my $OPS_TARGETS = $OPS ? ops_targets($OPS) : [];
alarm(0);
$machine->{load_end} = join(' ', (split ' ', slurp('/proc/loadavg'))[0 .. 2]);
if ($STAT0 and my $st1 = cpu_stat()) {
    my $dt = $st1->{total} - $STAT0->{total};
    $machine->{busy} = sprintf(
        '%.0f%% of all CPU time busy, %.1f%% stolen (whole machine, incl. this benchmark)',
        100 * ($st1->{busy} - $STAT0->{busy}) / $dt,
        100 * ($st1->{steal} - $STAT0->{steal}) / $dt) if $dt > 0;
}
stop_upstream();

# ---------------------------------------------------------------- results

sub median {
    my ($list) = @_;
    return undef unless $list && @$list;
    my @s = sort { $a <=> $b } @$list;
    return @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2;
}

# (max - min) / median of a sample list
sub spread {
    my ($list) = @_;
    my $m = median($list);
    return undef unless $m;
    my @s = sort { $a <=> $b } @$list;
    return ($s[-1] - $s[0]) / $m;
}

# ops/s medians
my %MED = map { $_ => median($SAMPLES{$_}) } keys %SAMPLES;

sub baseline_key {
    my ($kind, $workload) = @_;
    my ($first) = grep { $SHAPE_OF{$_} eq $SHAPE_OF{$workload} } @WORKLOADS;
    return "$kind/$first/raw/100";
}
sub baseline { $MED{ baseline_key(@_) } }

# Time-per-op ratio other/ours, raw and with the empty-loop time subtracted.
# Computed round by round from the samples taken in the same round (the
# machine's speed drifts between rounds), then the median over the rounds.
sub ratios {
    my ($ours_s, $other_s, $loop_s) = @_;
    return (undef, undef) unless $ours_s && $other_s;
    my (@raw, @net);
    for my $i (0 .. $#$ours_s) {
        my ($o, $x) = ($ours_s->[$i], $other_s->[$i]);
        next unless $o && $x;
        my ($to, $tx) = (1 / $o, 1 / $x);
        push @raw, $tx / $to;
        my $l = $loop_s ? $loop_s->[$i] : undef;
        next unless $l;
        my $tl = 1 / $l;
        push @net, ($tx - $tl) / ($to - $tl) if $to - $tl > 0 && $tx - $tl > 0;
    }
    # a net ratio only when most rounds gave one
    return (median(\@raw), @net > @raw / 2 ? median(\@net) : undef);
}

my @rows;
for my $c (@cases) {
    my ($w, $ser, $size) = @$c{qw(workload ser size)};
    my $ours = $MED{"ours/$c->{id}"};
    my $up   = $MED{"upstream/$c->{id}"};
    my $shm  = $MED{"shm/$c->{id}"};
    my $noop = baseline('noop', $w);
    my $loop = baseline('loop', $w);
    my ($so, $sl) = ($SAMPLES{"ours/$c->{id}"}, $SAMPLES{ baseline_key('loop', $w) });
    my ($xu, $xun) = ratios($so, $SAMPLES{"upstream/$c->{id}"}, $sl);
    my ($xs, $xsn) = ratios($so, $SAMPLES{"shm/$c->{id}"}, $sl);
    # ours relative to the empty XS call: t_ours / t_noop
    my ($xn, $xnn) = ratios($SAMPLES{ baseline_key('noop', $w) }, $so, $sl);
    push @rows, {
        %$c,
        ours_ops => $ours, upstream_ops => $up, shm_ops => $shm,
        noop_ops => $noop, loop_ops => $loop,
        ours_ns  => $ours ? 1e9 / $ours : undef,
        ours_spread => spread($SAMPLES{"ours/$c->{id}"}),
        x_upstream => $xu, x_upstream_net => $xun,
        x_shm => $xs, x_shm_net => $xsn,
        over_noop => $xn, over_noop_net => $xnn,
        samples => { map { $_ => $SAMPLES{"$_/$c->{id}"} }
                     grep { $SAMPLES{"$_/$c->{id}"} } qw(ours upstream shm) },
    };
}

my %mp;
for my $impl (@MP_IMPLS) {
    next unless $MULTI{$impl};
    my ($one, $two) = (median($MULTI{$impl}{1}), median($MULTI{$impl}{2}));
    # 2p/1p ratio paired round by round, like the others
    my @r = map { $MULTI{$impl}{1}[$_] ? $MULTI{$impl}{2}[$_] / $MULTI{$impl}{1}[$_] : () }
        0 .. $#{ $MULTI{$impl}{1} };
    $mp{$impl} = { one => $one, two => $two, ratio => median(\@r),
                   samples => $MULTI{$impl} };
}

# issue-4 targets (raw, 100 B, one process)
my %row = map { ("$_->{workload}/$_->{ser}/$_->{size}" => $_) } @rows;
my @targets;
sub target {
    my ($name, $want, $cmp, $raw, $net) = @_;
    my $ok = sub { my $v = shift; return undef unless defined $v;
                   $cmp eq '>=' ? ($v >= $want ? 1 : 0) : ($v <= $want ? 1 : 0) };
    push @targets, { name => $name, want => "$cmp $want", raw => $raw, net => $net,
                     met_raw => $ok->($raw), met_net => $ok->($net) };
}
if (my $r = $row{'get_hit/raw/100'}) {
    target('get (hit, raw, 100 B) vs upstream', 15, '>=', $r->{x_upstream}, $r->{x_upstream_net});
}
if (my $r = $row{'set/raw/100'}) {
    target('set (raw, 100 B) vs upstream', 10, '>=', $r->{x_upstream}, $r->{x_upstream_net});
}
if (my $r = $row{'gas/raw/0'}) {
    target('get_and_set (raw) vs upstream', 10, '>=', $r->{x_upstream}, $r->{x_upstream_net});
}
if (my $r = $row{'get_hit/storable/100'}) {
    target('get (hit, Storable, 100 B) vs upstream', 3, '>=', $r->{x_upstream}, $r->{x_upstream_net});
}
if (my $r = $row{'get_hit/raw/100'}) {
    target('get (hit, raw, 100 B) vs Hash::SharedMem', 1.3, '>=', $r->{x_shm}, $r->{x_shm_net});
    target('get (hit, raw, 100 B) time / _xs_noop time', 2, '<=', $r->{over_noop}, $r->{over_noop_net});
}
if ($mp{ours}) {
    target('mixed, 2 processes / 1 process (ours)', 1.7, '>=', $mp{ours}{ratio}, undef);
}

my $config = { reps => $opt{reps}, min_time => $opt{'min-time'}, sizes => \@SIZES,
               keys => $opt{keys}, seq_len => SEQ_LEN, quick => $opt{quick} ? 1 : 0,
               num_pages => NUM_PAGES, page_size => PAGE_SIZE };

if ($opt{json}) {
    my %base;
    for my $w (@WORKLOADS) {
        my $s = $SHAPE_OF{$w};
        $base{$s} //= { noop_ops => baseline('noop', $w), loop_ops => baseline('loop', $w) };
    }
    print JSON::PP->new->canonical->pretty->encode({
        machine => $machine, config => $config, results => \@rows,
        baselines => \%base, multi_process => \%mp, targets => \@targets,
        ($OPS ? (per_op => { %$OPS, targets => $OPS_TARGETS }) : ()),
    });
    exit 0;
}

sub fmt_ops {
    my ($v) = @_;
    return '-' unless defined $v;
    return sprintf('%.2fM', $v / 1e6) if $v >= 1e6;
    return sprintf('%.1fk', $v / 1e3) if $v >= 1e3;
    return sprintf('%.0f', $v);
}
sub fmt_x { defined $_[0] ? sprintf('%.2f', $_[0]) : '-' }
sub fmt_ns { defined $_[0] ? sprintf('%.0f', $_[0]) : '-' }

print "Cache::FastMmap benchmark\n";
printf "  %-10s %s\n", "$_:", $machine->{$_}
    for qw(date kernel cpu nproc perl load load_end busy ours),
        ($opt{'ops-only'} ? () : qw(upstream shm));
printf "  %-10s %d repetitions (median), >= %.2f s each, %d keys, values %s B, "
     . "cache %d x %d KB\n", 'config:', $opt{reps}, $opt{'min-time'}, $opt{keys},
     join('/', @SIZES), NUM_PAGES, PAGE_SIZE / 1024 unless $opt{'ops-only'};
if (@rows) {
    print "\n";
    print "Loop shapes (ns per iteration; 'loop' = same loop, call replaced by an assignment)\n";
    printf "  %-16s %8s %8s\n", 'shape', 'loop', 'noop';
    {
        my %done;
        for my $w (@WORKLOADS) {
            my $s = $SHAPE_OF{$w};
            next if $done{$s}++;
            my ($l, $n) = (baseline('loop', $w), baseline('noop', $w));
            printf "  %-16s %8s %8s\n", $s, fmt_ns($l ? 1e9 / $l : undef), fmt_ns($n ? 1e9 / $n : undef);
        }
    }
    print "\n";
    print "Single process, median ops/s.  xUP / xSHM = how many times faster than upstream /\n"
        . "Hash::SharedMem (raw: whole loop iteration; net: loop overhead subtracted;\n"
        . "ratios are taken within each round, then the median over the rounds).\n"
        . "/noop = our time per op divided by an empty XS method call's (same loop).\n"
        . "remove+set counts one remove plus one set as one op.  sprd = (max - min) / median\n"
        . "of our repetitions: a large spread means a noisy machine.\n\n";
    my $hdr = sprintf "%-16s %-8s %5s | %9s %6s %5s | %9s %6s %6s | %9s %6s %6s | %6s %6s\n",
        'workload', 'ser', 'size', 'ours', 'ns/op', 'sprd', 'upstream', 'xUP', 'net', 'shm', 'xSHM',
        'net', '/noop', 'net';
    print $hdr, '-' x (length($hdr) - 1), "\n";
    my $last_ser = '';
    for my $r (@rows) {
        print "\n" if $last_ser && $last_ser ne $r->{ser};
        $last_ser = $r->{ser};
        printf "%-16s %-8s %5s | %9s %6s %5s | %9s %6s %6s | %9s %6s %6s | %6s %6s\n",
            $LABEL{ $r->{workload} }, $r->{ser}, $r->{size} ? $r->{size} : 'int',
            fmt_ops($r->{ours_ops}), fmt_ns($r->{ours_ns}),
            defined $r->{ours_spread} ? sprintf('%.0f%%', 100 * $r->{ours_spread}) : '-',
            fmt_ops($r->{upstream_ops}), fmt_x($r->{x_upstream}), fmt_x($r->{x_upstream_net}),
            fmt_ops($r->{shm_ops}), fmt_x($r->{x_shm}), fmt_x($r->{x_shm_net}),
            fmt_x($r->{over_noop}), fmt_x($r->{over_noop_net});
    }
}
if (%mp) {
    print "\nMixed 90/10 zipf, raw, 100 B, N processes on one cache: aggregate ops/s\n";
    printf "  %-10s %10s %10s %8s\n", 'impl', '1 proc', '2 procs', '2p/1p';
    for my $impl (@MP_IMPLS) {
        my $m = $mp{$impl} or next;
        printf "  %-10s %10s %10s %8s\n", $impl, fmt_ops($m->{one}), fmt_ops($m->{two}),
            fmt_x($m->{ratio});
    }
}
if (@targets) {
    print "\nIssue 4 targets (raw = whole loop iteration, net = loop overhead subtracted)\n";
    for my $t (@targets) {
        my $v = sub { my ($x, $m) = @_; defined $x ? sprintf('%.2f %s', $x, $m ? 'MET' : 'MISSED') : '-' };
        printf "  %-44s want %-6s raw %-12s net %s\n", $t->{name}, $t->{want},
            $v->($t->{raw}, $t->{met_raw}), $v->($t->{net}, $t->{met_net});
    }
}
print_ops($OPS, $OPS_TARGETS) if $OPS;
exit 0;
