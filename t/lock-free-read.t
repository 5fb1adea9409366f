#!perl
# get and exists read without the page lock when they can (a sequence-lock
# read, see README "SPEED"): a process holding a page lock without changing
# it does not block readers, while a read that must update the entry's
# last-access time, and every write, still waits for the lock.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use IO::Select;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '');
$c->set('k', 'old');
# another key on the same page as 'k'
my ($page) = Cache::FastMmap::fc_hash($c->{Cache}, 'k');
my $n = 0;
$n++ until (Cache::FastMmap::fc_hash($c->{Cache}, "same$n"))[0] == $page;
my $same = "same$n";
$c->set($same, 'neighbour');

# A holder sits inside a get_and_set callback: it holds the page lock and
# has not changed the page yet.
pipe(my $r, my $w) or die "pipe: $!";
my $holder = FMTest::fork_child(60, sub {
    close $r;
    $c->get_and_set('k', sub { syswrite($w, 'L'); sleep 1 while 1; 'never' });
    return 9;
});
close $w;
ok(IO::Select->new($r)->can_read(30) && sysread($r, my $b, 1), 'holder has the page lock');

my $st = FMTest::run_in_child(10, sub {
    return 2 unless ($c->get('k') // '') eq 'old';
    return 3 unless ($c->get($same) // '') eq 'neighbour';
    return 4 unless $c->exists('k') && !$c->exists('missing-on-that-page');
    return 0;
});
is(FMTest::describe_status($st), 'exit 0', 'reads of that page do not wait for an idle lock holder');

$st = FMTest::run_in_child(3, sub { $c->set($same, 'x'); 0 });
is(FMTest::describe_status($st), 'signal 14', 'a write to that page waits for the lock');

$st = FMTest::run_in_child(3, sub {
    Cache::FastMmap::_set_time_override($T0 + 5);
    $c->get('k');
    0;
});
is(FMTest::describe_status($st), 'signal 14',
   'a read that must update the last-access time waits for the lock');

kill 'KILL', $holder;
FMTest::wait_children(20, $holder);

# With the holder gone the lock is free again; the value never changed.
is($c->get('k'), 'old', 'value unchanged');
Cache::FastMmap::_set_time_override($T0 + 5);
is($c->get('k'), 'old', 'a read with a new time takes the lock and works');
my ($details) = grep { $_->{key} eq 'k' } $c->get_keys(1);
is($details->{last_access}, $T0 + 5, '... and updates the last-access time');

# Concurrent writers and lock-free readers: every value read is one that
# was written for its key (values embed the key and a checksum).
{
    my $d = FMTest::new_cache(num_pages => 2, page_size => 16384, serializer => '');
    Cache::FastMmap::_set_time_override(0);
    my $val = sub { my ($k, $i) = @_; my $v = "$k:$i:" . ('x' x ($i % 50)); "$v:" . unpack('%32C*', $v) };
    $d->set("w$_", $val->("w$_", 0)) for 1 .. 20;
    my $bar = FMTest::barrier();
    my @writers = map {
        my $id = $_;
        FMTest::fork_child(60, sub {
            $bar->wait;
            for my $i (1 .. 3000) { my $k = "w" . (1 + ($i * 7 + $id) % 20); $d->set($k, $val->($k, $i)) }
            return 0;
        });
    } 1 .. 2;
    my $reader = FMTest::fork_child(60, sub {
        $bar->wait;
        for my $i (1 .. 20000) {
            my $k = "w" . (1 + $i % 20);
            my $v = $d->get($k);
            next unless defined $v;
            my ($body, $sum) = $v =~ /\A(.*):(\d+)\z/s or return 3;
            return 4 unless $sum == unpack('%32C*', $body) && index($body, "$k:") == 0;
        }
        return 0;
    });
    $bar->release;
    my $res = FMTest::wait_children(90, @writers, $reader);
    is(FMTest::describe_status($res->{$reader}), 'exit 0', 'lock-free readers never saw a torn or foreign value');
    is_deeply([map { FMTest::describe_status($res->{$_}) } @writers], ['exit 0', 'exit 0'], 'writers finished');
}

done_testing;
