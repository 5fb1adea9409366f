#!perl
# A child forked while its parent holds a page lock, half-way through a
# change, inherits the handle's "locked" state but not the lock: whatever
# the child does with that handle -- fc_unlock, or dropping the object --
# must leave the parent's lock and the page's lock-entry words alone (see
# rust/fork.rs and Cache::unlock). Checked from the parent's side only, so
# that it holds whether the child's page operations work or croak:
#  - the lock word still names the parent (glibc layout, Linux),
#  - the "being mutated" marker is still set and the change counter still
#    the same odd value (so lock-free readers still keep off the page),
#  - other processes still wait: a set, and a get of that page,
#  - and when the parent unlocks, the counter moves on to the next even
#    value exactly, and other processes get through again.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

my %GEOM = (num_pages => 3, page_size => 8192);

# One descriptor per file, kept open: with the fcntl lock backend, closing any
# descriptor of the share file would drop every lock this process holds on it
# (classic fcntl locks), the parent's page lock included.
my %FH;
sub u32_at {
    my ($file, $off) = @_;
    my $fh = $FH{$file} ||= do { open my $f, '<:raw', $file or die "$file: $!"; $f };
    sysseek($fh, $off, 0) or die "seek: $!";
    sysread($fh, my $b, 4) == 4 or die "short read";
    return unpack 'L', $b;
}

# Statuses of two bounded children started at once: one sets $set_key, one
# gets $get_key. Both on a page someone holds: both must still be waiting
# when their alarm ends them.
sub others_wait {
    my ($file, $set_key, $get_key) = @_;
    my $open = sub { Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '', unlink_on_exit => 0) };
    my $s = FMTest::fork_child(2, sub { $open->()->set($set_key, 'other'); 0 });
    my $g = FMTest::fork_child(2, sub { $open->()->get($get_key); 0 });
    my $st = FMTest::wait_children(20, $s, $g);
    return (FMTest::describe_status($st->{$s}), FMTest::describe_status($st->{$g}));
}

for my $how ('fc_unlock', 'object dropped') {
    my $file = FMTest::share_file('fork');
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '', unlink_on_exit => 0);
    my $h = $c->{Cache};
    my ($page, $slot) = Cache::FastMmap::fc_hash($h, 'mine');
    my ($mate, $mate_slot);
    for (my $i = 0; !defined $mate; $i++) {
        my ($p, $s) = Cache::FastMmap::fc_hash($h, "mate$i");
        ($mate, $mate_slot) = ("mate$i", $s) if $p == $page;
    }
    $c->set($mate, 'before');
    my $entry = FMTest::lock_entry_off($GEOM{page_size}, $page);
    my $start = u32_at($file, $entry + 60);
    is($start % 2, 0, "$how: change counter even at rest");

    # the parent locks the page and starts changing it
    Cache::FastMmap::fc_lock($h, $page);
    is(Cache::FastMmap::fc_write($h, $slot, 'mine', 'one', 0, 0), 1, "$how: parent wrote under its lock");
    my $during = u32_at($file, $entry + 60);
    is($during, $start + 1, "$how: counter odd while the parent's change is under way");
    is(u32_at($file, $entry + 56), 1, "$how: marker set");

    # a child that inherited all this releases it, its way
    my $child = FMTest::fork_child(20, sub {
        if ($how eq 'fc_unlock') { eval { Cache::FastMmap::fc_unlock($h) } }
        else { undef $h; eval { undef $c } }
        return 0;
    });
    my $st = FMTest::wait_children(30, $child);
    is(FMTest::describe_status($st->{$child}), 'exit 0', "$how: child done");

    is(u32_at($file, $entry + 60), $during, "$how: the parent's change counter is untouched (still odd)");
    is(u32_at($file, $entry + 56), 1, "$how: the parent's marker is untouched");
    SKIP: {
        skip 'lock word layout is glibc/Linux', 1 unless $^O eq 'linux';
        skip 'the fcntl backend has no lock word (the lock is in the kernel)', 1
            unless Cache::FastMmap::_lock_backend() eq 'robust-mutex';
        is(u32_at($file, $entry) & 0x3fffffff, $$, "$how: the lock word still names the parent");
    }
    ok(Cache::FastMmap::fc_is_locked($h), "$how: the parent's handle still holds its lock");
    is_deeply([others_wait($file, $mate, $mate)], ['signal 14', 'signal 14'],
              "$how: another process's set and get of that page still wait (until their alarm)");

    # the parent finishes its change and unlocks
    is(Cache::FastMmap::fc_write($h, $mate_slot, $mate, 'parent', 0, 0), 1, "$how: the parent goes on writing");
    Cache::FastMmap::fc_unlock($h);
    is(u32_at($file, $entry + 60), $start + 2, "$how: the parent's unlock publishes its change: next even counter");
    is(u32_at($file, $entry + 56), 0, "$how: marker clear");
    my $other = FMTest::run_in_child(10, sub {
        my $o = Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '', unlink_on_exit => 0);
        return 2 unless ($o->get('mine') // '') eq 'one' && ($o->get($mate) // '') eq 'parent';
        $o->set($mate, 'later');
        return ($o->get($mate) // '') eq 'later' ? 0 : 3;
    });
    is(FMTest::describe_status($other), 'exit 0', "$how: then another process reads the parent's values and writes");
    is($c->repaired_pages, 0, "$how: nothing was repaired");
}

done_testing;
