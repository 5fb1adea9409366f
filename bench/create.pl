#!/usr/bin/perl
# Creation time of a new cache file: this checkout's build (from ./blib)
# against Debian's Cache::FastMmap 1.57, each run in its own process (so the
# two modules never meet in one interpreter), alternating, fresh file each
# time. Reports the median and best of --reps runs per implementation and
# the ratio of medians. Usage:
#   perl bench/create.pl [--reps=9] [--mb=256] [--page-size=65536] [--dir=DIR]...
# Several --dir options compare filesystems (default: $TMPDIR and /dev/shm).
use strict;
use warnings;
use Cwd ();
use File::Spec ();
use File::Temp ();
use Getopt::Long ();

my ($reps, $mb, $ps, @dirs) = (9, 256, 65536);
Getopt::Long::GetOptions('reps=i' => \$reps, 'mb=i' => \$mb, 'page-size=i' => \$ps,
                         'dir=s' => \@dirs) or die "bad options\n";
@dirs = (File::Spec->tmpdir, grep { -d && -w } '/dev/shm') unless @dirs;
my $root = Cwd::abs_path(File::Spec->catdir((File::Spec->splitpath(Cwd::abs_path(__FILE__)))[1], File::Spec->updir));
my @ours = ('-I', "$root/blib/lib", '-I', "$root/blib/arch");
my $np = int($mb * 1024 * 1024 / $ps);

# One creation, timed inside the child; prints "<impl> <seconds>".
my $child = <<'PERL';
use strict; use Time::HiRes qw(time); use Cache::FastMmap;
my ($file, $ps, $np, $want) = @ARGV;
my $impl = $Cache::FastMmap::IMPLEMENTATION // 'c';
die "expected $want, loaded $impl from $INC{'Cache/FastMmap.pm'}\n" unless $impl eq $want;
unlink $file;
my $t = time;
my $c = Cache::FastMmap->new(share_file => $file, page_size => $ps, num_pages => $np,
                             init_file => 1, unlink_on_exit => 0);
my $dt = time - $t;
undef $c; unlink $file;
printf "%.6f\n", $dt;
PERL

sub run_one {
    my ($dir, $impl) = @_;
    my $file = "$dir/fmbench-create-$$";
    my @cmd = ($^X, ($impl eq 'rust' ? @ours : ()), '-e', $child, $file, $ps, $np, $impl);
    open my $p, '-|', @cmd or die "@cmd: $!";
    my $out = do { local $/; <$p> };
    close $p or die "child failed ($impl): $out\n";
    return $out + 0;
}

sub median { my @s = sort { $a <=> $b } @_; $s[$#s / 2] }

printf "creation of a %d MB cache (%d pages of %d bytes), %d runs each\n", $mb, $np, $ps, $reps;
for my $dir (@dirs) {
    my %t = (rust => [], c => []);
    for (1 .. $reps) {
        push @{ $t{$_} }, run_one($dir, $_) for qw(rust c);
    }
    my ($r, $c) = (median(@{ $t{rust} }), median(@{ $t{c} }));
    printf "%-14s rust median %.4f s (best %.4f)   1.57 median %.4f s (best %.4f)   ratio %.2f\n",
        $dir, $r, (sort { $a <=> $b } @{ $t{rust} })[0], $c, (sort { $a <=> $b } @{ $t{c} })[0], $r / $c;
}
