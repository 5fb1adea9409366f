#!perl
# Page locks across PID namespaces (issue 10 item 1): processes in different
# containers sharing one file can have the same pid and thread id (PID 1 in
# both). A waiter whose thread id equals the holder's must wait, not croak
# "already locked by another Cache::FastMmap object in this process"; a
# holder killed in another namespace is still recovered; and two handles in
# ONE process still get that error (it comes from process memory now).
#
# Each namespace is made with `unshare --pid --fork --mount-proc` (skipped
# with the reason where the machine does not allow it). The processes talk
# through files in the test's temp dir; every wait is bounded, every child
# reaped (unshare --kill-child takes the namespace down with it).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Cwd ();
use File::Spec ();
use Time::HiRes ();

plan skip_all => 'PID namespaces are Linux-only' unless $^O eq 'linux';
my $unshare = (grep { -x } map { "$_/unshare" } split /:/, ($ENV{PATH} // '') . ':/usr/bin:/bin')[0];
plan skip_all => 'no unshare(1) on this machine' unless $unshare;
{
    my $out = `$unshare --pid --fork --mount-proc --kill-child $^X -e 'print \$\$' 2>&1`;
    plan skip_all => "unshare --pid --fork --mount-proc is not allowed here: "
        . ($out =~ s/\s+\z//r) unless defined $out && $out eq '1';
}

my $dir  = FMTest::tmpdir();
my @inc  = map { ('-I', Cwd::abs_path($_)) } grep { -d } qw(blib/lib blib/arch t/lib);
my %GEOM = (num_pages => 1, page_size => 16384, serializer => '', unlink_on_exit => 0);

# The program each namespace runs. FMTest refuses to run on anything but our
# build. Roles: 'hold' takes the page in a get_and_set and keeps it until
# told; 'add' waits until the holder has it, then increments.
my $prog = <<'PERL';
use strict; use warnings; use FMTest; use Time::HiRes ();
my ($role, $file, $dir) = @ARGV;
$| = 1;
sub wait_for { my ($f, $t) = @_; my $end = time + $t;
    Time::HiRes::sleep(0.02) until -e $f || time > $end; -e $f }
sub touch { open my $fh, '>', $_[0] or die "$_[0]: $!"; close $fh }
print "pid=$$\n";
my $c = Cache::FastMmap->new(share_file => $file, num_pages => 1, page_size => 16384,
                             serializer => '', unlink_on_exit => 0);
if ($role eq 'hold') {
    $c->get_and_set('n', sub {
        touch("$dir/holds");
        wait_for("$dir/release", 60) or die "never released\n";
        $_[1] + 1 });
    print "hold=", $c->get('n'), "\n";
} else {
    wait_for("$dir/holds", 60) or die "holder never held\n";
    touch("$dir/adding");
    my $ok = eval { $c->get_and_set('n', sub { $_[1] + 1 }); 1 };
    print $ok ? "add=" . $c->get('n') . "\n" : "add-error=$@";
}
PERL

# start($role, $tag) -> pid of the unshare process (output in $dir/$tag.out)
sub start {
    my ($role, $file, $tag) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$dir/$tag.out" or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT;
        { exec $unshare, '--pid', '--fork', '--mount-proc', '--kill-child',
             $^X, @inc, "-e", $prog, $role, $file, $dir };
        POSIX::_exit(127);
    }
    return $pid;
}

sub slurp { open my $fh, '<', $_[0] or return ''; local $/; <$fh> }

sub wait_file {
    my ($f, $t) = @_;
    my $end = Time::HiRes::time() + $t;
    Time::HiRes::sleep(0.02) until -e $f || Time::HiRes::time() > $end;
    return -e $f;
}

# The process (seen from here) that unshare forked: the namespace's PID 1.
sub inner_pid {
    my ($outer, $t) = @_;
    my $end = Time::HiRes::time() + $t;
    while (Time::HiRes::time() < $end) {
        for my $stat (glob '/proc/[0-9]*/stat') {
            my $s = slurp($stat);
            return $1 if $s =~ /^(\d+) \(.*\) \S (\d+) / && $2 == $outer;
        }
        Time::HiRes::sleep(0.05);
    }
    return;
}

# Is $pid sleeping on a futex (waiting for the page lock)? undef: the kernel
# does not say (no wchan), so it cannot be checked here. The fcntl backend
# waits in the kernel's byte-range lock code instead (wchan names a lock
# function, e.g. fcntl_setlk).
my $FCNTL = Cache::FastMmap::_lock_backend() eq 'fcntl';
sub blocked_on_futex {
    my ($pid, $t) = @_;
    my $end = Time::HiRes::time() + $t;
    while (Time::HiRes::time() < $end) {
        return 0 unless kill 0, $pid;
        my $w = slurp("/proc/$pid/wchan");
        return undef if $w eq '' || $w eq '0';
        return 1 if $w =~ ($FCNTL ? qr/setlk|lock/ : qr/futex/);
        Time::HiRes::sleep(0.02);
    }
    return 0;
}

sub scenario {
    my ($tag, $kill_holder) = @_;
    unlink map { "$dir/$_" } qw(holds adding release);
    my $file = FMTest::share_file($tag);
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    $c->set('n', 0);
    my $a = start('hold', $file, "$tag-A");
    ok(wait_file("$dir/holds", 30), "$tag: the holder (PID 1 of its namespace) has the page")
        or diag slurp("$dir/$tag-A.out");
    my $b = start('add', $file, "$tag-B");
    ok(wait_file("$dir/adding", 30), "$tag: the adder (PID 1 of another namespace) is about to lock");
    my $inner_b = inner_pid($b, 10);
    my $blocked = defined $inner_b ? blocked_on_futex($inner_b, 20) : undef;
    if (defined $blocked) {
        ok($blocked, "$tag: the adder waits on the lock (does not croak at once)");
    } else {
        diag "$tag: /proc/PID/wchan says nothing here: the wait itself is not observed";
    }
    if ($kill_holder) {
        my $inner_a = inner_pid($a, 10);
        ok($inner_a && kill('KILL', $inner_a), "$tag: holder killed while holding the page");
    } else {
        open my $fh, '>', "$dir/release" or die; close $fh;
    }
    my $st = FMTest::wait_children(60, $a, $b);
    my ($ao, $bo) = (slurp("$dir/$tag-A.out"), slurp("$dir/$tag-B.out"));
    like($ao, qr/^pid=1$/m, "$tag: holder ran as PID 1");
    like($bo, qr/^pid=1$/m, "$tag: adder ran as PID 1");
    unlike($bo, qr/add-error/, "$tag: no lock error in the adder") or diag $bo;
    is(FMTest::describe_status($st->{$b}), 'exit 0', "$tag: adder finished");
    if ($kill_holder) {
        like($bo, qr/^add=1$/m, "$tag: the dead holder's lock was recovered, the adder's increment stored");
        is($c->get('n'), 1, "$tag: value 1 (the holder died before storing)");
    } else {
        like($ao, qr/^hold=1$/m, "$tag: holder stored 1");
        like($bo, qr/^add=2$/m, "$tag: the adder ran after the holder and stored 2");
        is($c->get('n'), 2, "$tag: both increments kept");
    }
}

scenario('live', 0);
scenario('killed', 1);

# Two handles in ONE process, same page: still refused at once (no hang).
{
    my $file = FMTest::share_file('two-handles');
    my $st = FMTest::run_in_child(30, sub {
        my $c1 = Cache::FastMmap->new(share_file => $file, %GEOM);
        my $c2 = Cache::FastMmap->new(share_file => $file, %GEOM);
        my $err;
        $c1->get_and_set('n', sub { eval { $c2->set('n', 5) }; $err = $@; 1 });
        return 3 unless ($err // '') =~ /page 0 is already locked by another Cache::FastMmap object in this process/;
        return 4 unless $c2->set('n', 6) && $c1->get('n') == 6;
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0',
       'two handles in one process on one page: "already locked by another object in this process", then both work');
}

done_testing;
