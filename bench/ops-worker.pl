#!/usr/bin/perl
#
# bench/ops-worker.pl -- one implementation's side of bench.pl's per-operation
# suite.  bench.pl starts one worker per implementation, each in its own perl
# process, and talks to it with one JSON line per command (see bench/README,
# "Per-operation suite").  It is not meant to be run by hand, except under
# valgrind, which bench.pl also does for it:
#
#   perl bench/ops-worker.pl --impl=ours|upstream|dhms --dir=DIR [--root=DIR]
#        [--dhms=DIR] [--keys=25000] [--big-keys=1000000]
#        [--callgrind=N --workloads=a,b,c]
#
#   ours      this checkout's blib (--root, default the checkout holding this
#             script); refuses anything but the Rust build
#   upstream  Cache::FastMmap from the system perl, nothing of --root in @INC
#   dhms      Data::HashMap::Shared::SS built in --dhms (its blib/lib and
#             blib/arch), through its keyword API (shm_ss_get ...)
#
# Server mode (default) reads commands on stdin:
#   {"cmd":"measure","workload":W,"passes":P}
#       -> {"body":s,"empty":s,"ops":n}: thread CPU seconds of P passes of the
#          workload's loop and of the same loop with an empty body (the
#          body's statement, result assignment included, is what is measured)
#   {"cmd":"prepare","workload":W}   build the workload's cache now
#   {"cmd":"quit"}
# With --callgrind=N it instead runs each of --workloads between two markers
# (getppid() zeroes callgrind's counters, getpgrp() dumps them) over N and 2N
# operations, with and without the body, and prints the list of dumps as one
# JSON line.

use strict;
use warnings;
use Cwd ();
use File::Basename ();
use File::Spec ();
use Getopt::Long ();
use JSON::PP ();
use POSIX ();
use Time::HiRes ();

my %opt = (keys => 25_000, 'big-keys' => 1_000_000);
Getopt::Long::GetOptions(\%opt, 'impl=s', 'dir=s', 'root=s', 'dhms=s', 'keys=i',
    'big-keys=i', 'callgrind=i', 'workloads=s') or die "bad options\n";
my $IMPL = $opt{impl} // die "--impl is required\n";
my $DIR  = $opt{dir}  // die "--dir is required\n";
my $ROOT = $opt{root} // Cwd::abs_path(File::Spec->catdir(
    File::Basename::dirname(Cwd::abs_path(__FILE__)), File::Spec->updir));

use constant VALUE_SIZE  => 100;
use constant GROUP       => 10;      # keys per multi_get
use constant HOT_KEYS    => 16;
use constant CHUNK       => 25_000;  # keys per timed loop
use constant PAGE_SIZE   => 65536;
my $CLK = Time::HiRes::CLOCK_THREAD_CPUTIME_ID();

sub under {
    my ($path, $dir) = @_;
    my $p = Cwd::abs_path($path) // return 0;
    my $d = Cwd::abs_path($dir)  // return 0;
    return index("$p/", "$d/") == 0;
}

# ---------------------------------------------------------------- loading

my %info = (impl => $IMPL);
if ($IMPL eq 'ours') {
    unshift @INC, "$ROOT/blib/lib", "$ROOT/blib/arch";
    require Cache::FastMmap;
    die "not this checkout's build: $INC{'Cache/FastMmap.pm'}\n"
        unless under($INC{'Cache/FastMmap.pm'}, "$ROOT/blib/lib")
            && ($Cache::FastMmap::IMPLEMENTATION // '') eq 'rust';
    %info = (%info, version => $Cache::FastMmap::VERSION, path => $INC{'Cache/FastMmap.pm'});
}
elsif ($IMPL eq 'upstream') {
    @INC = grep { ref($_) || !under($_, $ROOT) } @INC;
    require Cache::FastMmap;
    die "loaded $INC{'Cache/FastMmap.pm'}, which is not the upstream C build\n"
        if defined $Cache::FastMmap::IMPLEMENTATION;
    %info = (%info, version => $Cache::FastMmap::VERSION, path => $INC{'Cache/FastMmap.pm'});
}
elsif ($IMPL eq 'dhms') {
    my $d = $opt{dhms} // die "--dhms is required for --impl=dhms\n";
    unshift @INC, "$d/blib/lib", "$d/blib/arch";
    require Data::HashMap::Shared::SS;
    %info = (%info, version => $Data::HashMap::Shared::SS::VERSION,
             path => $INC{'Data/HashMap/Shared/SS.pm'});
}
else { die "unknown --impl=$IMPL\n" }
my $IS_FM = $IMPL ne 'dhms';

# ---------------------------------------------------------------- key lists
#
# Keys are 10 bytes ("k" and 9 digits), values 100 bytes.  Every list is
# built from a fixed seed with the same perl, so all workers see the same
# sequences.

sub shuffled {
    my ($seed, @a) = @_;
    srand($seed);
    for (my $i = $#a; $i > 0; $i--) {
        my $j = int rand($i + 1);
        @a[$i, $j] = @a[$j, $i];
    }
    return \@a;
}
sub chunks_of {
    my ($list, $n) = @_;
    my @c;
    for (my $i = 0; $i < @$list; $i += $n) {
        my $e = $i + $n - 1;
        $e = $#$list if $e > $#$list;
        push @c, [ @$list[$i .. $e] ];
    }
    return \@c;
}

my $V = 'v' x VALUE_SIZE;
my %LIST;   # name => [ chunk, ... ]; built on first use
my %LIST_MAKER = (
    # each of the keys once, in a shuffled order
    pass   => sub { chunks_of(shuffled(1, map { sprintf 'k%09d', $_ } 0 .. $opt{keys} - 1), CHUNK) },
    # keys that are never stored
    miss   => sub { chunks_of(shuffled(2, map { sprintf 'm%09d', $_ } 0 .. $opt{keys} - 1), CHUNK) },
    # a few stored keys, over and over
    hot    => sub { my @h = @{ list('pass')->[0] }[0 .. HOT_KEYS - 1];
                    [ [ map { $h[$_ % HOT_KEYS] } 0 .. CHUNK - 1 ] ] },
    # [page key, [10 keys]] for multi_get, over the same keys as 'pass'
    groups => sub {
        my @all = map { @$_ } @{ list('pass') };
        my @g;
        for (my $i = 0; $i + GROUP <= @all; $i += GROUP) {
            push @g, [ sprintf('g%07d', $i / GROUP), [ @all[$i .. $i + GROUP - 1] ] ];
        }
        chunks_of(\@g, CHUNK / GROUP);
    },
    # the big key space, each key once
    bigpass => sub { chunks_of(shuffled(3, map { sprintf 'k%09d', $_ } 0 .. $opt{'big-keys'} - 1), CHUNK) },
);
sub list { my ($name) = @_; $LIST{$name} //= $LIST_MAKER{$name}->() }

# ---------------------------------------------------------------- caches

my %CACHE_SPEC = (
    plain   => { pages => 1024,  fill => 'pass' },
    plain16 => { pages => 256,   fill => 'pass' },
    scratch => { pages => 1024 },
    rcb     => { pages => 1024,  fill => 'pass', args => [read_cb => sub { undef }] },
    wb      => { pages => 1024,  fill => 'pass',
                 args => [write_cb => sub { }, write_action => 'write_back'] },
    multi   => { pages => 1024,  fill => 'groups' },
    big     => { pages => 16384, fill => 'bigpass', reuse => 1 },
);

sub fill {
    my ($c, $what) = @_;
    if ($what eq 'groups') {
        for my $g (map { @$_ } @{ list('groups') }) {
            $c->multi_set($g->[0], { map { $_ => $V } @{ $g->[1] } });
        }
        return;
    }
    for my $chunk (@{ list($what) }) {
        if ($IS_FM) { $c->set($_, $V) for @$chunk }
        else        { $c->put($_, $V) for @$chunk }
    }
}

my %CACHE;
sub cache {
    my ($name) = @_;
    return $CACHE{$name} //= do {
        my $s = $CACHE_SPEC{$name};
        my $file = File::Spec->catfile($DIR, "$IMPL-$name");
        my $c;
        if ($IS_FM) {
            # the big cache's file is kept, so that a worker under valgrind
            # can use the one a timing worker filled
            my $reuse = $s->{reuse} && -s $file;
            $c = Cache::FastMmap->new(
                share_file => $file, init_file => $reuse ? 0 : 1,
                unlink_on_exit => $s->{reuse} ? 0 : 1,
                cache_size => ($s->{pages} * PAGE_SIZE / 1048576) . 'm',
                num_pages => $s->{pages}, serializer => '', @{ $s->{args} // [] });
            my $l = $s->{fill} ? list($s->{fill}) : undef;
            undef $reuse if $reuse && !(defined $c->get($l->[0][0]) && defined $c->get($l->[-1][-1]));
            fill($c, $s->{fill}) if $s->{fill} && !$reuse;
        }
        else {
            my $n = $s->{fill} && $s->{fill} eq 'bigpass' ? $opt{'big-keys'} : $opt{keys};
            # room for every key, and an arena for 4x the data
            $c = Data::HashMap::Shared::SS->new($file, 2 * $n, 2 * $n, 0, 0,
                                                4 * $n * (VALUE_SIZE + 16));
            fill($c, $s->{fill}) if $s->{fill};
        }
        $c;
    };
}

sub clear_cache { my ($c) = @_; $c->clear }

# ---------------------------------------------------------------- workloads
#
# cache: which cache; list: which key list; body: which call; before: what
# each timed pass needs first (outside the timing); read: a lookup that
# callgrind mode repeats once, uncounted, right before counting (see
# run_callgrind).

my %WORKLOAD = (
    insert      => { cache => 'scratch', list => 'pass',    body => 'set', before => 'empty' },
    get         => { cache => 'plain',   list => 'pass',    body => 'get', read => 1 },
    hot         => { cache => 'plain',   list => 'hot',     body => 'get', read => 1 },
    miss        => { cache => 'plain',   list => 'miss',    body => 'get', read => 1 },
    delete      => { cache => 'scratch', list => 'pass',    body => 'remove', before => 'full' },
    set         => { cache => 'plain',   list => 'pass',    body => 'set' },
    get_rcb     => { cache => 'rcb',     list => 'pass',    body => 'get', read => 1 },
    set_wb      => { cache => 'wb',      list => 'pass',    body => 'set' },
    multi_get10 => { cache => 'multi',   list => 'groups',  body => 'mget', read => 1 },
    get_16m     => { cache => 'plain16', list => 'pass',    body => 'get', read => 1 },
    get_1m      => { cache => 'big',     list => 'bigpass', body => 'get' },
    noop        => { cache => 'plain',   list => 'hot',     body => 'noop' },
);
my %BODY = (
    fm => {
        get    => '$x = $c->get($k);',
        set    => '$c->set($k, $v);',
        remove => '$c->remove($k);',
        mget   => '$x = $c->multi_get($k->[0], $k->[1]);',
        noop   => '$x = $c->_xs_noop($k);',
    },
    dhms => {
        get    => '$x = shm_ss_get $c, $k;',
        set    => 'shm_ss_put $c, $k, $v;',
        remove => 'shm_ss_remove $c, $k;',
    },
);
my %SUPPORTED = (
    ours     => [ keys %WORKLOAD ],
    upstream => [ qw(insert get hot miss delete set multi_get10) ],
    dhms     => [ qw(insert get hot miss delete set) ],
);
my %OK = map { $_ => 1 } @{ $SUPPORTED{$IMPL} };
$info{workloads} = [ sort keys %OK ];

my %LOOP;
sub loop_sub {
    my ($body) = @_;
    return $LOOP{$body} //= do {
        my $src = ($IS_FM ? '' : 'use Data::HashMap::Shared::SS; ') . <<"EOT";
sub {
    my (\$c, \$keys, \$v) = \@_;
    my \$x;
    my \$t0 = Time::HiRes::clock_gettime($CLK);
    for my \$k (\@\$keys) { $body }
    return Time::HiRes::clock_gettime($CLK) - \$t0;
}
EOT
        my $sub = eval $src;   ## no critic (string eval: generated loop)
        die "loop '$body' does not compile: $@" unless $sub;
        $sub;
    };
}

sub workload {
    my ($name) = @_;
    die "workload $name is not available for $IMPL\n" unless $OK{$name};
    my $w = $WORKLOAD{$name};
    my $c = cache($w->{cache});
    my $chunks = list($w->{list});
    my $b = $BODY{ $IS_FM ? 'fm' : 'dhms' }{ $w->{body} };
    my $before = !$w->{before} ? undef
        : $w->{before} eq 'empty' ? sub { clear_cache($c) }
        : sub { clear_cache($c); fill($c, $w->{list}) };
    return ($w, $c, $chunks, loop_sub($b), loop_sub(';'), $before);
}

my %CURSOR;   # workload => next chunk
sub measure {
    my ($name, $passes) = @_;
    my ($w, $c, $chunks, $body, $empty, $before) = workload($name);
    my ($tb, $te, $ops) = (0, 0, 0);
    for (1 .. $passes) {
        my $i = $CURSOR{$name}++ % @$chunks;
        my $keys = $chunks->[$i];
        $before->() if $before;
        $tb += $body->($c, $keys, $V);
        $te += $empty->($c, $keys, $V);
        $ops += @$keys;
    }
    return { body => $tb, empty => $te, ops => $ops };
}

# ---------------------------------------------------------------- callgrind
#
# For each workload: the body over N operations, over 2N, then the empty loop
# over N and 2N, each between getppid() (--zero-before=Perl_pp_getppid) and
# getpgrp() (--dump-before=Perl_pp_getpgrp).  The difference of the two dumps
# divided by N is the cost of N operations without any fixed cost around the
# loop.  Reads first run once over the same keys outside the counting, so
# that they count the steady state a timed loop sees: the engine's lookups
# take a page lock for the first read of a key in each second, and under
# valgrind's slowdown a pass would otherwise always be the first in its
# second.  The 1M-key pass is not warmed: in the timed runs too, every key
# is read long after its last read.

sub run_callgrind {
    my ($n) = @_;
    my @dumps;
    for my $name (split /,/, $opt{workloads} // '') {
        next unless $OK{$name};
        my ($w, $c, $chunks, $body, $empty, $before) = workload($name);
        my $per = $w->{list} eq 'groups' ? GROUP : 1;
        my $m = int($n / $per) || 1;
        my @keys = map { @$_ } @$chunks[0 .. ($#$chunks < 2 ? $#$chunks : 2)];
        die "workload $name: too few keys for --callgrind=$n\n" if @keys < 3 * $m;
        my @slice = ([ @keys[0 .. $m - 1] ], [ @keys[$m .. 3 * $m - 1] ]);
        for my $kind (qw(body empty)) {
            for my $s (@slice) {
                my $sub = $kind eq 'body' ? $body : $empty;
                $before->() if $before && $kind eq 'body';
                $sub->($c, $s, $V) if $w->{read} && $kind eq 'body';
                my $zero = getppid();
                $sub->($c, $s, $V);
                my $dump = getpgrp();
                push @dumps, { workload => $name, kind => $kind, ops => scalar @$s };
            }
        }
    }
    return \@dumps;
}

# ---------------------------------------------------------------- main

my $json = JSON::PP->new->canonical;
$| = 1;
if ($opt{callgrind}) {
    my $d = run_callgrind($opt{callgrind});
    print $json->encode({ ok => 1, %info, dumps => $d }), "\n";
    exit 0;
}
print $json->encode({ ok => 1, %info, pid => $$ }), "\n";
while (my $line = <STDIN>) {
    my $cmd = eval { $json->decode($line) } // {};
    my $c = $cmd->{cmd} // '';
    last if $c eq 'quit';
    my $r = eval {
        $c eq 'measure' ? measure($cmd->{workload}, $cmd->{passes})
      : $c eq 'prepare' ? do { my $t = Time::HiRes::time(); workload($cmd->{workload});
                               { secs => Time::HiRes::time() - $t } }
      : die "unknown command '$c'\n";
    } // { ok => 0, error => "$@" };
    $r->{ok} //= 1;
    print $json->encode($r), "\n";
}
%CACHE = ();
exit 0;
