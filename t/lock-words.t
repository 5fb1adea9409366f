#!perl
# Lock words read from the file are validated (issue 10 item 4), while the
# file is open elsewhere (so nothing is reset at open): a lock word naming a
# thread that does not exist (with and without the waiters bit), a zeroed
# entry and 0xFF garbage are taken over after a bounded wait (the rule is in
# rust/lock.rs and README.pod), never a hang or "Lock failed: Invalid
# argument" forever. A live holder that is slow is still waited for.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Time::HiRes ();

plan skip_all => 'the lock-entry layout checked here is glibc/Linux'
    unless $^O eq 'linux';

my %GEOM = (num_pages => 1, page_size => 16384, serializer => '', unlink_on_exit => 0);
my $ENTRY = FMTest::lock_entry_off($GEOM{page_size}, 0);   # the one page's lock entry

sub poke {
    my ($file, $off, $bytes) = @_;
    open my $fh, '+<:raw', $file or die "$file: $!";
    sysseek($fh, $off, 0) or die;
    syswrite($fh, $bytes) == length $bytes or die "short write";
    close $fh;
}

my @cases = (
    ['a lock word naming a missing thread',              pack('L', 0x3fff_fff0)],
    ['... with the waiters bit',                         pack('L', 0x8000_0000 | 0x3fff_fff0)],
    ['a zeroed entry',                                   "\0" x 64],
    ['an 0xFF entry',                                    "\xff" x 64],
);
for my $case (@cases) {
    my ($name, $bytes) = @$case;
    my $file = FMTest::share_file('words');
    my $keep = Cache::FastMmap->new(share_file => $file, %GEOM);   # another user
    $keep->set('old', 'kept');
    poke($file, $ENTRY, $bytes);
    my $st = FMTest::run_in_child(30, sub {
        my @w;
        local $SIG{__WARN__} = sub { push @w, @_ };
        my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
        $c->set('k', 'v');
        return 3 unless ($c->get('k') // '') eq 'v';
        $c->set('k', 'w');     # and again: the lock works normally now
        return 4 unless ($c->get('k') // '') eq 'w';
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0', "$name: a set takes it over (alarm-bounded)");
    ok(eval { $keep->set('k2', 'x'); $keep->get('k2') eq 'x' }, "$name: the other user works too")
        or diag $@;
    is($keep->get('k'), 'w', "$name: the value stored through the taken-over lock is there");
}

# A live holder that takes its time: waited for, not taken over. The holder
# keeps the page well past several checks (released only after the waiter
# has been seen waiting and a few seconds more); if the waiter stole it,
# one increment would be lost.
{
    my $file = FMTest::share_file('slow');
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    $c->set('n', 0);
    my $dir = FMTest::tmpdir();
    unlink "$dir/release";
    pipe(my $r, my $w) or die;
    my $holder = FMTest::fork_child(60, sub {
        close $r;
        my $h = Cache::FastMmap->new(share_file => $file, %GEOM);
        $h->get_and_set('n', sub {
            syswrite $w, 'H';
            my $end = time + 40;
            Time::HiRes::sleep(0.02) until -e "$dir/release" || time > $end;
            $_[1] + 1 });
        return 0;
    });
    close $w;
    sysread $r, my $got, 1;
    is($got, 'H', 'slow holder has the page');
    my $waiter = FMTest::fork_child(60, sub {
        my $h = Cache::FastMmap->new(share_file => $file, %GEOM);
        $h->get_and_set('n', sub { $_[1] + 1 });
        return 0;
    });
    # seen waiting, when the kernel says (wchan), then several checks' worth
    my $end = Time::HiRes::time() + 20;
    while (Time::HiRes::time() < $end) {
        open my $fh, '<', "/proc/$waiter/wchan" or last;
        my $wc = <$fh> // '';
        last if $wc =~ /futex/ || $wc eq '' || $wc eq '0';
        Time::HiRes::sleep(0.02);
    }
    sleep 4;
    open my $fh, '>', "$dir/release" or die; close $fh;
    my $st = FMTest::wait_children(60, $holder, $waiter);
    is(FMTest::describe_status($st->{$holder}), 'exit 0', 'holder finished');
    is(FMTest::describe_status($st->{$waiter}), 'exit 0', 'waiter finished');
    is($c->get('n'), 2, 'the waiter waited for the live holder: both increments kept');
}

done_testing;
