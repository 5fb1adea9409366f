#!perl
# Concurrent creation (SPEC 1.8, 2.1; DESIGN 4): several processes released
# at the same instant all call new() on the same not-yet-existing share file
# with init_file => 0. None may die or crash, and all must end up on ONE
# file: a value set by any of them is visible to all of them afterwards.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use Time::HiRes ();

my $PROCS = 8;
my $ROUNDS = 5;

for my $round (1 .. $ROUNDS) {
    my $dir = FMTest::tmpdir() . "/race$round";
    mkdir $dir or die "mkdir $dir: $!";
    my $file = "$dir/cache";
    my %geom = (num_pages => 17, page_size => 65536);

    my $start = FMTest::barrier();
    my $check = FMTest::barrier();
    pipe(my $ready_r, my $ready_w) or die "pipe: $!";

    my @pids;
    for my $i (1 .. $PROCS) {
        push @pids, FMTest::fork_child(60, sub {
            close $ready_r;
            $start->wait;
            my $c = eval {
                Cache::FastMmap->new(share_file => $file, init_file => 0, unlink_on_exit => 0,
                                     serializer => '', %geom);
            };
            my $err = $@;
            my $stored = $c ? $c->set("proc$i", "value$i") : 0;
            syswrite($ready_w, $c ? 'y' : 'n');
            close $ready_w;
            if (!$c) {
                print STDERR "round $round proc $i: new died: $err";
                return 2;
            }
            return 3 unless $stored == 1;
            $check->wait;
            my @missing = grep { ($c->get("proc$_") // '') ne "value$_" } 1 .. $PROCS;
            if (@missing) {
                print STDERR "round $round proc $i: cannot see procs @missing\n";
                return 4;
            }
            return 0;
        });
    }
    close $ready_w;
    $start->release;

    # wait (bounded) until every child has created its cache and stored its key
    my $sel = IO::Select->new($ready_r);
    my ($n, $buf) = (0, '');
    my $end = Time::HiRes::time() + 60;
    while ($n < $PROCS && (my $left = $end - Time::HiRes::time()) > 0) {
        last unless $sel->can_read($left);
        my $r = sysread($ready_r, my $chunk, 64);
        last unless $r;
        $buf .= $chunk;
        $n += $r;
    }
    close $ready_r;
    $check->release;

    my $st = FMTest::wait_children(90, @pids);
    is($buf =~ tr/y//, $PROCS, "round $round: all $PROCS processes created their cache");
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], [('exit 0') x $PROCS],
              "round $round: every process saw every other process's value")
        or diag("0 ok, 2 new died, 3 set failed, 4 values missing");

    my $c = Cache::FastMmap->new(share_file => $file, init_file => 0, serializer => '', %geom);
    is_deeply({ map { $_ => $c->get($_) } map { "proc$_" } 1 .. $PROCS },
              { map { ("proc$_" => "value$_") } 1 .. $PROCS },
              "round $round: a later process sees all values");
    undef $c;
    opendir(my $dh, $dir) or die;
    my @files = grep { !/^\.\.?\z/ } readdir $dh;
    is_deeply(\@files, ['cache'], "round $round: exactly one file in the directory");
    unlink $file;
}

done_testing;
