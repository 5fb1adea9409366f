#!perl
# A process SIGKILLed while it holds a page lock must not wedge the cache
# (DESIGN 3: robust process-shared mutexes; upstream: fcntl locks die with
# the process). The victim signals through a pipe from inside a callback
# that runs with the page locked, then is killed. Every later access --
# from a process that was already waiting, from a new process, and from
# the parent -- must get through, bounded by kernel-enforced alarms.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;

sub wait_for_byte {
    my ($fh, $timeout) = @_;
    return undef unless IO::Select->new($fh)->can_read($timeout);
    my $n = sysread($fh, my $b, 1);
    return $n ? $b : undef;
}

our $ReadHook;
my @variants = (
    [ 'get_and_set callback', sub {
          my ($c, $w) = @_;
          $c->get_and_set('k', sub { syswrite($w, 'L'); sleep 1 while 1; $_[1] + 1000 });
      } ],
    [ 'read_cb', sub {
          my ($c, $w) = @_;
          # a missing key on the same page as 'k'
          my ($page) = Cache::FastMmap::fc_hash($c->{Cache}, 'k');
          my $n = 0;
          $n++ until (Cache::FastMmap::fc_hash($c->{Cache}, "miss$n"))[0] == $page;
          # callbacks are fixed at construction (the fast paths depend on
          # it), so the cache's read_cb delegates to this per-process hook
          $ReadHook = sub { syswrite($w, 'L'); sleep 1 while 1; 'from read_cb' };
          $c->get("miss$n");
      } ],
    [ 'get_and_set callback, second time on the same page', sub {
          my ($c, $w) = @_;
          $c->get_and_set('k', sub { syswrite($w, 'L'); sleep 1 while 1; 0 });
      } ],
);

my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '',
                          read_cb => sub { $ReadHook ? $ReadHook->(@_) : undef });
$c->set('k', 100);
$c->set("other$_", "x$_") for 1 .. 30;
my $expect = 100;

for my $v (@variants) {
    my ($name, $code) = @$v;
    pipe(my $r, my $w) or die "pipe: $!";
    my $victim = FMTest::fork_child(60, sub { close $r; $code->($c, $w); return 9 });
    close $w;
    my $got = wait_for_byte($r, 30);
    close $r;
    is($got, 'L', "$name: victim holds the page lock");

    # a process that (probably) starts waiting for the lock before the kill
    my $waiter = FMTest::fork_child(30, sub {
        my $v = $c->get_and_set('k', sub { $_[1] + 1 });
        return $v == $expect + 1 ? 0 : 3;
    });

    kill 'KILL', $victim;
    my $st = FMTest::wait_children(30, $victim);
    is(FMTest::describe_status($st->{$victim}), 'signal 9', "$name: victim SIGKILLed");

    $st = FMTest::wait_children(40, $waiter);
    is(FMTest::describe_status($st->{$waiter}), 'exit 0',
       "$name: a waiting process got the lock and saw the old value");
    $expect++;

    my $s2 = FMTest::run_in_child(30, sub {
        return 3 unless ($c->get('k') // '') eq $expect;
        $c->set('k', $expect + 1) or return 4;
        return 5 if grep { ($c->get("other$_") // '') ne "x$_" } 1 .. 30;
        return 0;
    });
    is(FMTest::describe_status($s2), 'exit 0', "$name: a new process reads, writes, sees other keys intact");
    $expect++;

    # the parent itself: a hang here is ended by the default SIGALRM action
    local $SIG{ALRM} = 'DEFAULT';
    alarm(30);
    is($c->get('k'), $expect, "$name: parent reads the key");
    is($c->get_and_set('k', sub { $_[1] + 1 }), $expect + 1, "$name: parent get_and_set works");
    $expect++;
    my %keys = map { $_ => 1 } $c->get_keys(0);
    is(scalar(keys %keys), 31, "$name: all entries still listed");
    alarm(0);
}

# afterwards the cache still works for concurrent users
{
    my $bar = FMTest::barrier();
    my @pids = map {
        FMTest::fork_child(60, sub { $bar->wait; $c->get_and_set('k', sub { $_[1] + 1 }) for 1 .. 1000; 0 })
    } 1 .. 2;
    $bar->release;
    my $st = FMTest::wait_children(90, @pids);
    is_deeply([map { FMTest::describe_status($st->{$_}) } @pids], ['exit 0', 'exit 0'], 'two incrementers finished');
    is($c->get('k'), $expect + 2000, 'no lost update after the kills');
}

done_testing;
