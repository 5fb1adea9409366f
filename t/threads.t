#!perl
# Perl ithreads: objects that exist when a thread starts work in it (each
# thread gets its own handle on the same file), objects opened inside
# threads work, threads and forked processes exclude each other on every
# page (exact totals of concurrent get_and_set increments), a thread dying
# inside a callback releases its lock, and a thread's copies never empty or
# delete the file when the thread ends.
use strict;
use warnings;
use Config;
use lib 't/lib';

BEGIN {
    # machine: a perl built without ithreads cannot run threads at all
    unless ($Config{useithreads}) {
        require Test::More;
        Test::More::plan(skip_all => 'this perl is built without ithreads');
    }
}
use threads;
use FMTest;
use Test::More;

my %GEOM = (num_pages => 5, page_size => 16384, serializer => '');
my $THREADS = 4;
my $ROUNDS = 300;

# ---------------------------------------- objects cloned into threads
{
    my $c = FMTest::new_cache(%GEOM, unlink_on_exit => 1);
    $c->set("pre$_", "value$_") for 1 .. 50;
    my @t = map {
        my $n = $_;
        threads->create(sub {
            my @bad = grep { ($c->get("pre$_") // '') ne "value$_" } 1 .. 50;
            $c->set("thread$n", "from thread $n") or return "set failed";
            return "not locked-free" if Cache::FastMmap::fc_is_locked($c->{Cache});
            return @bad ? "bad: @bad" : 'ok';
        });
    } 1 .. $THREADS;
    is_deeply([map { $_->join } @t], [('ok') x $THREADS], 'a cloned object reads and writes in every thread');
    is_deeply([map { $c->get("thread$_") } 1 .. $THREADS], [map { "from thread $_" } 1 .. $THREADS],
              '... and the main thread sees what they wrote');
    ok(-e $c->{share_file}, "a thread's copy ending does not unlink the creator's file");
    is($c->get('pre1'), 'value1', "... nor empty it, and the main object still works");
}

# ---------------------------------------- objects opened inside threads
{
    my $file = FMTest::share_file();
    my @t = map {
        my $n = $_;
        threads->create(sub {
            my $c = Cache::FastMmap->new(share_file => $file, %GEOM, unlink_on_exit => 0);
            $c->set("inner$n", $n) or return 'set failed';
            return 'ok';
        });
    } 1 .. $THREADS;
    is_deeply([map { $_->join } @t], [('ok') x $THREADS], 'objects created inside threads work');
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM, unlink_on_exit => 1);
    is_deeply([map { $c->get("inner$_") } 1 .. $THREADS], [1 .. $THREADS], '... on the same file');
}

# ---------------------------------------- threads and processes at once
for my $variant (['fast path', ()], ['general path', read_cb => sub { undef }, write_cb => sub { }]) {
    my ($name, @cb) = @$variant;
    my $c = FMTest::new_cache(%GEOM, @cb);
    my $go = FMTest::barrier();
    my @pids = map {
        FMTest::fork_child(60, sub {
            $go->wait;
            $c->get_and_set("count" . ($_ % 3), sub { ($_[1] // 0) + 1 }) for 1 .. $ROUNDS * 3;
            return 0;
        });
    } 1 .. 2;
    my @t = map {
        threads->create(sub {
            $go->wait;
            $c->get_and_set("count" . ($_ % 3), sub { ($_[1] // 0) + 1 }) for 1 .. $ROUNDS * 3;
            return 'ok';
        });
    } 1 .. $THREADS;
    $go->release;
    my @tr = map { $_->join } @t;
    my $st = FMTest::wait_children(120, @pids);
    is_deeply(\@tr, [('ok') x $THREADS], "$name: every thread finished");
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], ['exit 0', 'exit 0'],
              "$name: every process finished");
    my $total = 0;
    $total += $c->get("count$_") // 0 for 0 .. 2;
    is($total, ($THREADS + 2) * $ROUNDS * 3, "$name: no increment lost between threads and processes");
}

# ---------------------------------------- a thread dying inside a callback
{
    my $c = FMTest::new_cache(%GEOM);
    $c->set('k', 1);
    my $r = threads->create(sub {
        my $ok = eval { $c->get_and_set('k', sub { die "callback died\n" }); 1 };
        return 'did not die' if $ok;
        return 'wrong error' unless $@ eq "callback died\n";
        return Cache::FastMmap::fc_is_locked($c->{Cache}) ? 'still locked' : 'ok';
    })->join;
    is($r, 'ok', 'a die in a callback in a thread releases its lock');
    my $killed = threads->create(sub {
        $c->get_and_set('k', sub { threads->exit(0) });
        'not reached';
    })->join;
    ok(!defined $killed, 'a thread that exits inside a callback ends');
    my @locked = grep {
        my $p = $_;
        !eval { local $SIG{ALRM} = sub { die "blocked\n" }; alarm 10;
                Cache::FastMmap::fc_lock($c->{Cache}, $p); Cache::FastMmap::fc_unlock($c->{Cache});
                alarm 0; 1 };
    } 0 .. $GEOM{num_pages} - 1;
    is_deeply(\@locked, [], '... and the main thread then locks every page');
    is($c->get_and_set('k', sub { $_[1] + 1 }), 2, '... and the value is unchanged by both');
}

# ---------------------------------------- a thread created while a lock is held
{
    my $c = FMTest::new_cache(%GEOM);
    my $h = $c->{Cache};
    my $page = (Cache::FastMmap::fc_hash($h, 'held'))[0];
    my ($other) = grep { (Cache::FastMmap::fc_hash($h, $_))[0] != $page } map { "o$_" } 1 .. 1000;
    my ($in_thread, $still_locked);
    $c->get_and_set('held', sub {
        # The thread's copy of this object holds no lock, and its copy of the
        # lock guard must not release ours when the thread ends.
        $in_thread = threads->create(sub {
            return 'copy locked' if Cache::FastMmap::fc_is_locked($c->{Cache});
            $c->set($other, 'from the thread') or return 'set failed';
            return 'ok';
        })->join;
        $still_locked = Cache::FastMmap::fc_is_locked($h);
        'by the parent';
    });
    is($in_thread, 'ok', 'a thread started inside a callback uses other pages');
    ok($still_locked, "... and its end leaves the creator's lock alone");
    is_deeply([$c->get('held'), $c->get($other)], ['by the parent', 'from the thread'],
              '... both values stored');
}

# ---------------------------------------- detached threads, live objects at exit
{
    my $c = FMTest::new_cache(%GEOM, unlink_on_exit => 1, empty_on_exit => 1);
    $c->set('keep', 'me');
    my $done = FMTest::share_file();
    threads->create(sub {
        my $d = Cache::FastMmap->new(share_file => $c->{share_file}, %GEOM, unlink_on_exit => 0);
        $d->set('detached', 1);
        open my $fh, '>', $done or die;
        close $fh;
    })->detach;
    for (1 .. 200) { last if -e $done; select(undef, undef, undef, 0.05) }
    ok(-e $done, 'a detached thread ran');
    select(undef, undef, undef, 0.2);
    is($c->get('keep'), 'me', 'a thread exiting with live objects neither empties nor unlinks');
    is($c->get('detached'), 1, '... and what it wrote is there');
}

done_testing;
