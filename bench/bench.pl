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
#   --time-limit=S   give up after S seconds (default 900)
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
    'time-limit' => 900,
);
Getopt::Long::GetOptions(\%opt,
    'quick', 'json', 'reps=i', 'min-time=f', 'sizes=s', 'keys=i', 'impl=s',
    'server', 'no-upstream', 'no-shm', 'no-multi', 'time-limit=i', 'help|h',
) or die "usage: perl bench/bench.pl [--quick] [--json] [--reps=N] [--min-time=S]\n";
if ($opt{help}) {
    print "usage: perl bench/bench.pl [--quick] [--json] [--reps=N] [--min-time=S]\n"
        . "       [--sizes=10,100,1024] [--keys=N] [--no-upstream] [--no-shm] [--no-multi]\n"
        . "See bench/README.\n";
    exit 0;
}
$opt{reps}  //= $opt{quick} ? 3 : 5;
$opt{sizes} //= $opt{quick} ? '100' : '10,100,1024';
$opt{reps} = 1 if $opt{reps} < 1;
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
if ($opt{'no-upstream'}) {
    $UP_WHY = 'disabled with --no-upstream';
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

# ---------------------------------------------------------------- plan

my @WORKLOADS = qw(set get_hit get_miss mixed gas rmset get_hit_rcb set_wb);
my %LABEL = (set => 'set', get_hit => 'get (hit)', get_miss => 'get (miss)',
             mixed => 'mixed 90/10 zipf', gas => 'get_and_set +1', rmset => 'remove+set',
             get_hit_rcb => 'get hit, read_cb', set_wb => 'set, write-back');
my %SHM_OK = map { $_ => 1 } qw(set get_hit get_miss mixed);

my @cases;   # { workload, ser, size, id }
for my $ser (qw(raw storable)) {
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
if (!$opt{'no-multi'}) {
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
    for qw(date kernel cpu nproc perl load load_end busy ours upstream shm);
printf "  %-10s %d repetitions (median), >= %.2f s each, %d keys, values %s B, "
     . "cache %d x %d KB\n", 'config:', $opt{reps}, $opt{'min-time'}, $opt{keys},
     join('/', @SIZES), NUM_PAGES, PAGE_SIZE / 1024;
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
exit 0;
