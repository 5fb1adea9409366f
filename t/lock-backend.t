#!perl
# The page-lock backend (issue 13 item 3): _lock_backend() names it (and,
# when the CI says which one it built, it is that one), and what the fcntl
# backend must add to process-owned kernel locks holds for both backends:
#
#  1. Two handles on one file in one process: a lock taken through A stays
#     held against another process when B is closed (closing any descriptor
#     drops all of a process's classic fcntl locks on the file).
#  2. Threads of one process exclude each other on a page, through cloned
#     objects and through objects of their own on the same file (exact
#     totals of concurrent read-modify-write increments).
#  3. A process SIGKILLed while it holds a page lock: the next locker gets
#     the lock within a bounded time, the values on the page read back and
#     no change marker is left (t/kill-recovery.t kills holders in the middle
#     of changes, on both backends).
#  4. Handles of one process see each other as "open" (an opener whose own
#     process has the file open never re-initialises it under itself).
use strict;
use warnings;
use Config;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;
use Time::HiRes ();

my %GEOM = (num_pages => 3, page_size => 16384, serializer => '', unlink_on_exit => 0);

# ---------------------------------------------------------------- 0. which backend
my $backend = Cache::FastMmap::_lock_backend();
like($backend, qr/\A(?:robust-mutex|fcntl)\z/, "_lock_backend() is '$backend'");
is($backend, 'fcntl', 'systems other than Linux get the fcntl backend') if $^O ne 'linux';
if (my $want = $ENV{FASTMMAP_EXPECT_BACKEND}) {
    is($backend, $want, "the build CI asked for ($want) is the one that runs");
}

sub page_of {
    my ($c, $key) = @_;
    return (Cache::FastMmap::fc_hash($c->{Cache}, $key))[0];
}

# A line from a child's pipe within $secs seconds, or undef.
sub line_within {
    my ($fh, $secs) = @_;
    my $sel = IO::Select->new($fh);
    return undef unless $sel->can_read($secs);
    my $line = <$fh>;
    chomp $line if defined $line;
    return $line;
}

# ---------------------------------------------------------------- 1. two handles
{
    my $file = FMTest::share_file('two');
    my $a = Cache::FastMmap->new(share_file => $file, %GEOM);
    my $b = Cache::FastMmap->new(share_file => $file, %GEOM);
    $b->set('from_b', 1);
    my $page = page_of($a, 'probe');
    Cache::FastMmap::fc_lock($a->{Cache}, $page);
    undef $b;    # closes B's handle while A holds the page
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        $w->autoflush(1);
        my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
        print $w "ready\n";
        $c->get_and_set('probe', sub { 'child' });    # blocks while A holds the page
        print $w "got\n";
        return 0;
    });
    close $w;
    is(line_within($r, 30), 'ready', 'the other process has the file open');
    # If closing B had dropped A's lock, the child would get through now.
    is(line_within($r, 1.5), undef,
       'closing a second handle leaves the lock taken through the first held');
    Cache::FastMmap::fc_unlock($a->{Cache});
    is(line_within($r, 30), 'got', 'the other process gets the page once it is unlocked');
    is($a->get('from_b'), 1, '... and the first handle still works');
    my $st = FMTest::wait_children(30, $pid);
    is($st->{$pid}, 0, 'the child exits cleanly');
    is($a->get('probe'), 'child', "... and its value is there");
}

# ---------------------------------------------------------------- 2. threads
SKIP: {
    skip 'this perl is built without ithreads', 2 unless $Config{useithreads};
    require threads;
    my $file = FMTest::share_file('threads');
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    my $rounds = 200;
    my @t = map {
        my $own = $_ % 2;
        threads->create(sub {
            my $h = $own ? Cache::FastMmap->new(share_file => $file, %GEOM) : $c;
            $h->get_and_set('count', sub { ($_[1] // 0) + 1 }) for 1 .. $rounds;
            return 'ok';
        });
    } 1 .. 4;
    is_deeply([map { $_->join } @t], [('ok') x 4], 'four threads incremented');
    is($c->get('count'), 4 * $rounds, 'threads of one process exclude each other on a page');
}

# ---------------------------------------------------------------- 3. SIGKILL mid-change
{
    my $file = FMTest::share_file('kill');
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    $c->set("keep$_", "value$_") for 1 .. 20;
    my $page = page_of($c, 'victim');
    my @same = grep { page_of($c, $_) == $page } map { "keep$_" } 1 .. 20;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        $w->autoflush(1);
        my $v = Cache::FastMmap->new(share_file => $file, %GEOM);
        # Inside the callback the page is locked.
        $v->get_and_set('victim', sub {
            print $w "holding\n";
            sleep 60;
            return 'never';
        });
        return 0;
    });
    close $w;
    is(line_within($r, 30), 'holding', 'the victim holds the page lock');
    kill 'KILL', $pid;
    my $st = FMTest::wait_children(30, $pid);
    is($st->{$pid} & 127, 9, 'the victim was SIGKILLed');
    my $t0 = Time::HiRes::time();
    my $got = FMTest::run_in_child(30, sub {
        my $n = Cache::FastMmap->new(share_file => $file, %GEOM);
        $n->set('victim', 'after');
        return $n->get('victim') eq 'after' ? 0 : 1;
    });
    is($got, 0, 'the next locker gets the page of a killed holder');
    cmp_ok(Time::HiRes::time() - $t0, '<', 25, '... within a bounded time');
    is_deeply([map { $c->get($_) } @same], [map { /(\d+)/; "value$1" } @same],
              'the values on that page are intact');
    # Read through a second descriptor only in a child: in this process closing it
    # would drop the fcntl backend's locks.
    is(FMTest::run_in_child(30, sub {
        open my $fh, '<:raw', $file or die "$file: $!";
        sysseek($fh, FMTest::lock_entry_off($GEOM{page_size}, $page) + 56, 0) or die;
        sysread($fh, my $m, 4) == 4 or die;
        return unpack('L', $m) == 0 ? 0 : 1;
    }), 0, 'no change marker is left on the page');
}

# ---------------------------------------------------------------- 4. openers in one process
{
    my $file = FMTest::share_file('reinit');
    my $a = Cache::FastMmap->new(share_file => $file, %GEOM);
    $a->set('k', 'v');
    my $ino = (stat $file)[1];
    my $b = Cache::FastMmap->new(share_file => $file, %GEOM);
    is((stat $file)[1], $ino, 'a second opener in the same process uses the same file');
    is($b->get('k'), 'v', '... with its contents');
}

done_testing();
