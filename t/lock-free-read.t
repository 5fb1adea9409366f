#!perl
# get and exists read without the page lock when they can (a sequence-lock
# read, see README "SPEED"): a process holding a page lock without changing
# it does not block readers, not even a read that updates the entry's
# last-access time (a compare-and-swap of its slot), while every write still
# waits for the lock.
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
# a multi_set page key whose entries live on that page too
$n = 0;
$n++ until (Cache::FastMmap::fc_hash($c->{Cache}, "pk$n"))[0] == $page;
my $pk = "pk$n";
$c->multi_set($pk, { a => 'A', b => 'B' });
# and a batch bigger than one engine call of the lock-free multi_get (16 keys)
my @many = map { "m$_" } 1 .. 40;
$c->multi_set($pk, { map { ($_ => "V$_") } @many });

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

$st = FMTest::run_in_child(10, sub {
    Cache::FastMmap::_set_time_override($T0 + 2);
    my $h = $c->multi_get($pk, [qw(a b c)]);
    return join(',', map { "$_=$h->{$_}" } sort keys %$h) eq 'a=A,b=B' ? 0 : 2;
});
is(FMTest::describe_status($st), 'exit 0', 'multi_get of that page does not wait either');

$st = FMTest::run_in_child(10, sub {
    Cache::FastMmap::_set_time_override($T0 + 2);
    my $h = $c->multi_get($pk, [@many, 'gone1', 'gone2']);
    return 2 unless keys %$h == @many;
    return 3 if grep { ($h->{$_} // '') ne "V$_" } @many;
    return 0;
});
is(FMTest::describe_status($st), 'exit 0', '... nor one of 42 keys, read 16 at a time');

$st = FMTest::run_in_child(3, sub { $c->set($same, 'x'); 0 });
is(FMTest::describe_status($st), 'signal 14', 'a write to that page waits for the lock');

$st = FMTest::run_in_child(10, sub {
    Cache::FastMmap::_set_time_override($T0 + 3);
    return ($c->get('k') // '') eq 'old' ? 0 : 2;
});
is(FMTest::describe_status($st), 'exit 0',
   'a read that updates the last-access time does not wait for the lock either');

kill 'KILL', $holder;
FMTest::wait_children(20, $holder);

# With the holder gone the lock is free again; the value never changed.
is($c->get('k'), 'old', 'value unchanged');
my ($details) = grep { $_->{key} eq 'k' } $c->get_keys(1);
is($details->{last_access}, $T0 + 3, 'the lock-free read updated the last-access time');
my %multi = map { ($_->{key}, $_->{last_access}) } $c->get_keys(1);
is_deeply([@multi{"$pk-a", "$pk-b"}], [$T0 + 2, $T0 + 2], '... and so did the lock-free multi_get');
is_deeply([grep { $multi{"$pk-$_"} != $T0 + 2 } @many], [], '... for every key of every batch');
Cache::FastMmap::_set_time_override($T0 + 5);
is($c->get('k'), 'old', 'a read with a new time works');
($details) = grep { $_->{key} eq 'k' } $c->get_keys(1);
is($details->{last_access}, $T0 + 5, '... and updates the last-access time');

# Concurrent writers and lock-free readers: every value read is one that
# was written for its key (values embed the key and a checksum). Small
# pages and values of a few hundred bytes, so that sets compact the pages
# under the reader. The run cannot pass by reading nothing: the writers
# start only once the reader is reading, the reader goes on until both
# writers have exited, no key is ever evicted (six keys of at most 450
# bytes on two 8 KB pages), so every read must return a good value, and the
# last reads must see the writers' values.
{
    my $d = FMTest::new_cache(num_pages => 2, page_size => 8192, serializer => '');
    Cache::FastMmap::_set_time_override(0);
    my @keys = map { "w$_" } 1 .. 6;
    my $val = sub { my ($k, $i) = @_; my $v = "$k:$i:" . ('x' x (100 + $i * 7 % 300)); "$v:" . unpack('%32C*', $v) };
    $d->set($_, $val->($_, 0)) for @keys;
    my $bar = FMTest::barrier();         # released by the parent: start
    my $go = FMTest::barrier();          # released by the reader: writers go
    pipe(my $done_r, my $done_w) or die "pipe: $!";    # EOF: the writers have exited
    pipe(my $res_r, my $res_w) or die "pipe: $!";
    my @writers = map {
        my $id = $_;
        FMTest::fork_child(60, sub {
            close $done_r;
            $bar->wait;
            $go->wait;
            for my $i (1 .. 30000) { my $k = $keys[($i * 7 + $id) % @keys]; $d->set($k, $val->($k, $i)) }
            return 0;
        });
    } 1 .. 2;
    my $reader = FMTest::fork_child(60, sub {
        close $done_w;
        close $res_r;
        $bar->wait;
        my ($reads, $misses, $bad, $fresh, $during) = (0, 0, 0, 0, 0);
        my $rin = '';
        vec($rin, fileno($done_r), 1) = 1;
        my $writers_done = 0;
        for (my $i = 0; !$writers_done || $i % @keys; $i++) {
            if ($i == 1000) { $go->release }
            if ($i > 1000 && $i % 64 == 0 && select(my $rout = $rin, undef, undef, 0) > 0) {
                # only EOF can come; the keys are then read once more
                $writers_done = 1;
            }
            my $k = $keys[$i % @keys];
            my $v = $d->get($k);
            $reads++;
            if (!defined $v) { $misses++; next }
            my ($body, $n, $sum) = $v =~ /\A(\Q$k\E:(\d+):x*):(\d+)\z/s or ++$bad, next;
            $bad++ unless $sum == unpack('%32C*', $body);
            $fresh++ if $writers_done && $n > 0;
            $during++ if $i > 1000 && !$writers_done;
        }
        syswrite($res_w, "$reads $misses $bad $fresh $during\n");
        return 0;
    });
    close $done_w;
    close $done_r;
    close $res_w;
    $go->release;    # the parent's copy: only the reader's release counts
    $bar->release;
    my $res = FMTest::wait_children(90, @writers, $reader);
    my ($reads, $misses, $bad, $fresh, $during) = split ' ', (<$res_r> // '');
    note("reads: $reads, of which $during after the writers started and before they exited");
    close $res_r;
    is(FMTest::describe_status($res->{$reader}), 'exit 0', 'lock-free reader finished');
    is_deeply([map { FMTest::describe_status($res->{$_}) } @writers], ['exit 0', 'exit 0'], 'writers finished');
    cmp_ok($reads // 0, '>', 1000, "the reader read before, while and after the writers wrote ($reads reads)");
    is($misses, 0, 'every read found its key');
    is($bad, 0, 'lock-free readers never saw a torn or foreign value');
    cmp_ok($fresh // 0, '>=', 1, "the last reads saw the writers' values");
}

# enable_stats counts every key of a lock-free multi_get once: a read, and a
# hit when it was found (in stats and in the pages' own counters).
{
    my $s = FMTest::new_cache(num_pages => 3, page_size => 8192, serializer => '',
                              enable_stats => 1);
    $s->multi_set('grp', { map { ($_ => "v$_") } 1 .. 20 });
    my $h = $s->multi_get('grp', [1 .. 20, 'x', 'y', 'z']);
    is(scalar(keys %$h), 20, 'stats cache: multi_get found the 20 keys');
    my $st = $s->stats;
    is($st->{reads}, 23, 'stats: every key of the multi_get is one read');
    is($st->{hits}, 20, '... and every key found one hit');
    my ($nreads, $nhits) = $s->get_statistics;
    is_deeply([$nreads, $nhits], [23, 20], "... in the pages' counters too");
}

done_testing;
