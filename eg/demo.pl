#!/usr/bin/perl
#
# demo.pl - several processes sharing one Cache::FastMmap cache.
#
# The parent creates a cache in a temporary file, then forks a few workers.
# Each worker atomically increments a shared counter with get_and_set and
# stores some keys of its own.  When they are done, the parent reads what
# each worker reported through the cache and checks that the counter equals
# the sum of all increments (no update was lost to a race).
#
# Run after building:   perl -Mblib eg/demo.pl

use strict;
use warnings;

use Cache::FastMmap;
use File::Spec;
use POSIX ();

my $WORKERS    = 4;
my $INCREMENTS = 2000;    # per worker
my $KEYS       = 50;      # per worker
my $TIME_LIMIT = 60;      # seconds for the whole demo

my $share_file = File::Spec->catfile(File::Spec->tmpdir, "fastmmap-demo-$$.cache");

# The parent creates (and at exit removes) the cache file.  Storable, the
# default serializer, lets us store hashes as values.
my $cache = Cache::FastMmap->new(
  share_file     => $share_file,
  init_file      => 1,
  unlink_on_exit => 1,
  cache_size     => '4m',
  expire_time    => '10m',
);
$cache->set(counter => 0);

my $engine = do { no warnings 'once'; $Cache::FastMmap::IMPLEMENTATION || 'c' };
printf "Cache::FastMmap %s (%s engine), file %s\n",
  $Cache::FastMmap::VERSION, $engine, $share_file;
printf "%d pages of %d bytes\n\n", $cache->{num_pages}, $cache->{page_size};

my %children;    # pid => worker number

# Never hang: if something goes wrong, stop the workers and give up.
local $SIG{ALRM} = sub {
  warn "demo: time limit of $TIME_LIMIT s reached, stopping workers\n";
  kill 'TERM', keys %children;
  exit 1;
};
alarm $TIME_LIMIT;

for my $n (1 .. $WORKERS) {
  my $pid = fork;
  die "fork failed: $!" unless defined $pid;
  if ($pid == 0) {
    alarm $TIME_LIMIT;
    my $status = eval { worker($n); 1 } ? 0 : do { warn "worker $n: $@"; 1 };
    # The child shares the parent's cache object; its cleanup only closes
    # the child's own mapping (only the creating process removes the file).
    exit $status;
  }
  $children{$pid} = $n;
}

sub worker {
  my $n = shift;
  my ($increments, $stored) = (0, 0);
  for my $i (1 .. $INCREMENTS) {
    # get_and_set locks the counter's page for the whole read-modify-write,
    # so concurrent increments from other workers cannot be lost.
    $cache->get_and_set(counter => sub { ($_[1] || 0) + 1 });
    $increments++;
    if ($i % ($INCREMENTS / $KEYS) == 0) {
      $stored += $cache->set("worker$n:item$i", { worker => $n, seq => $i, pid => $$ });
    }
  }
  $cache->set("report:$n", {
    pid        => $$,
    increments => $increments,
    stored     => $stored,
    counter    => $cache->get('counter'),
  });
}

# Reap every worker and remember how each one ended.
my %status;
while (%children) {
  my $pid = waitpid(-1, 0);
  last if $pid <= 0;
  my $n = delete $children{$pid};
  $status{$n} = $? if defined $n;
}
alarm 0;

my $total = 0;
for my $n (1 .. $WORKERS) {
  my $report = $cache->get("report:$n");
  if (!$report) {
    printf "worker %d: no report (exit status %d)\n", $n, ($status{$n} || 0) >> 8;
    next;
  }
  my @items = grep { /^worker$n:/ } $cache->get_keys(0);
  printf "worker %d (pid %d): %d increments, %d keys stored (%d still in the cache),"
    . " saw the counter at %d when it finished\n",
    $n, $report->{pid}, $report->{increments}, $report->{stored}, scalar(@items),
    $report->{counter};
  $total += $report->{increments};
}

my $counter = $cache->get('counter');
printf "\nfinal counter: %d, sum of the increments: %d => %s\n",
  $counter, $total, $counter == $total ? 'OK, no update was lost' : 'MISMATCH';

# Dropping the object unmaps the cache and, in this (creating) process,
# removes the file because of unlink_on_exit.
undef $cache;
printf "cache file removed: %s\n", -e $share_file ? 'no' : 'yes';

exit($counter == $total ? 0 : 1);
