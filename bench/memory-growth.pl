#!/usr/bin/perl
#
# bench/memory-growth.pl -- process growth (VmSize) of a write-back cache whose
# sets evict dirty entries through write_cb, for this checkout's build and for
# Debian's Cache::FastMmap 1.57, each run in a fresh perl.
#
#   perl Makefile.PL && make && perl bench/memory-growth.pl [--runs=N] [--rounds=N] [--sets=N]
#
# Per workload and implementation it prints, for every round of --sets sets
# of new keys, the smallest and largest VmSize growth (KB) over --runs fresh
# processes.  The workloads are those of t/memory-growth.t.  Linux only
# (/proc/self/status); 1.57 is skipped with a note when it is not installed
# (apt-get install libcache-fastmmap-perl).
#
# Internal: --child=WORKLOAD runs one measurement and prints one line.

use strict;
use warnings;
use Cwd ();
use File::Basename ();
use File::Spec ();
use File::Temp ();
use Getopt::Long ();

my %opt = (runs => 10, rounds => 6, sets => 20_000);
Getopt::Long::GetOptions(\%opt, 'runs=i', 'rounds=i', 'sets=i', 'child=s')
    or die "usage: $0 [--runs=N] [--rounds=N] [--sets=N]\n";

# [options, shortest value, longest value, upstream-style values and prefill]
my %workloads = (
    # Upstream's memory test's cache: 10,000 entries first, then values of
    # 2..21 bytes, 20% of them utf8 and 20% undef.
    'upstream-shaped'         => [[num_pages => 17, page_size => '64k', raw_values => 1], 2, 21, 10_000],
    'small pages, raw values' => [[num_pages => 17, page_size => '8k', raw_values => 1], 2, 16],
    '1m cache, raw values'    => [[cache_size => '1m', raw_values => 1], 20, 200],
    '1m cache, Storable'      => [[cache_size => '1m'], 20, 200],
);

sub vmsize_kb {
    open my $fh, '<', '/proc/self/status' or die "cannot read /proc/self/status: $!\n";
    while (my $line = <$fh>) {
        return $1 if $line =~ /^VmSize:\s*(\d+)\s*kB/;
    }
    die "no VmSize in /proc/self/status\n";
}

if (defined $opt{child}) {
    my $w = $workloads{ $opt{child} } or die "unknown workload '$opt{child}'\n";
    my ($opts, $lo, $hi, $prefill) = @$w;
    require Cache::FastMmap;
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $writes = 0;
    my $c = Cache::FastMmap->new(
        share_file   => "$dir/cache",
        init_file    => 1,
        @$opts,
        write_action => 'write_back',
        read_cb      => sub { undef },
        write_cb     => sub { $writes++ },
        delete_cb    => sub { },
    );
    my $seed = 12345;
    my ($n, @growth) = (0);
    $c->set("pre$_", 'p' x 20) for 1 .. ($prefill || 0);
    my $before = vmsize_kb();
    for (1 .. $opt{rounds}) {
        for (1 .. $opt{sets}) {
            $seed = ($seed * 1103515245 + 12345) % 2147483648;
            $n++;
            my $v = 'v' x ($lo + $seed % ($hi - $lo + 1));
            $v = $n % 10 < 6 ? $v : $n % 10 < 8 ? "\x{263A}$v" : undef if $prefill;
            $c->set("key$n", $v);
        }
        my $after = vmsize_kb();
        push @growth, $after - $before;
        $before = $after;
    }
    no warnings 'once';
    my $impl = defined $Cache::FastMmap::IMPLEMENTATION ? $Cache::FastMmap::IMPLEMENTATION : 'c';
    print "$impl $INC{'Cache/FastMmap.pm'} $writes @growth\n";
    undef $c;
    exit 0;
}

my $root = Cwd::abs_path(File::Spec->catdir(File::Basename::dirname(__FILE__), File::Spec->updir));
my $blib = File::Spec->catdir($root, 'blib');
die "build the checkout first (perl Makefile.PL && make): no $blib/arch\n" unless -d "$blib/arch";
my $script = Cwd::abs_path(__FILE__);

# ours: this checkout's blib; 1.57: a perl whose @INC does not contain it.
my %impls = (
    ours   => [$^X, "-I$blib/lib", "-I$blib/arch", $script],
    '1.57' => [$^X, $script],
);
my %expect = (ours => 'rust', '1.57' => 'c');

printf "VmSize growth per round of %d sets (KB, min..max of %d fresh processes)\n\n",
    $opt{sets}, $opt{runs};
for my $name (sort keys %workloads) {
    print "$name\n";
    for my $impl ('ours', '1.57') {
        my (@min, @max, $skip);
        for (1 .. $opt{runs}) {
            my @cmd = (@{ $impls{$impl} }, "--child=$name",
                       "--rounds=$opt{rounds}", "--sets=$opt{sets}");
            open my $out, '-|', @cmd or die "cannot run $^X: $!\n";
            my $line = <$out>;
            close $out;
            my ($got, $pm, $writes, @g) = split ' ', defined $line ? $line : '';
            if (!defined $got || $got ne $expect{$impl}) {
                $skip = defined $got
                    ? "loaded the '$got' implementation from $pm"
                    : "no result (is Cache::FastMmap loadable?)";
                last;
            }
            die "$impl: no write_cb calls in workload '$name'\n" unless $writes;
            for my $i (0 .. $#g) {
                $min[$i] = $g[$i] if !defined $min[$i] || $g[$i] < $min[$i];
                $max[$i] = $g[$i] if !defined $max[$i] || $g[$i] > $max[$i];
            }
        }
        if ($skip) {
            printf "  %-5s skipped: %s\n", $impl, $skip;
            next;
        }
        printf "  %-5s %s\n", $impl,
            join '  ', map { $min[$_] == $max[$_] ? $min[$_] : "$min[$_]..$max[$_]" } 0 .. $#min;
    }
}
