#!perl
# init_file => 1 and geometry changes in place (issue 10 item 5): when a
# second copy does not fit on the filesystem, or the directory is not
# writable (the file is), the file is rebuilt in place -- but only while no
# other process has it open; otherwise a clear error names the file.
#
# The full filesystem is a small tmpfs mounted for the test (skipped where
# mounting is not allowed); the read-only directory needs root to switch a
# child to an unprivileged user (skipped otherwise).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use POSIX ();

plan skip_all => 'Linux-only (tmpfs mounts, OFD locks)' unless $^O eq 'linux';

my $base = FMTest::tmpdir();
my %G = (serializer => '', unlink_on_exit => 0, page_size => 65536);

# ------------------------------------------------ nearly full filesystem
SKIP: {
    skip 'mounting needs root', 7 unless $> == 0;
    my $mnt = "$base/small";
    mkdir $mnt or die;
    my $out = `mount -t tmpfs -o size=4m fmtest-small '$mnt' 2>&1`;
    skip "cannot mount a tmpfs here: $out", 7 if $?;
    my $file = "$mnt/c";
    my $ok = eval {
        my $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 40);
        $c->set('k', 'v');
        my $ino = (stat $file)[1];
        undef $c;
        $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 40, init_file => 1);
        is((stat $file)[1], $ino, 'init_file => 1 with no room for a second copy: rebuilt in place');
        ok(!defined $c->get('k'), '... and empty');
        ok($c->set('k2', 'w') && $c->get('k2') eq 'w', '... and usable');
        undef $c;
        $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 50);
        is((stat $file)[1], $ino, 'another geometry: in place too');
        is(-s $file, FMTest::file_size(50, $G{page_size}), '... at the new size');
        # another process has it open: no in-place rebuild, a clear error
        my $st = FMTest::run_in_child(30, sub {
            my $e = eval { Cache::FastMmap->new(share_file => $file, %G, num_pages => 50,
                                                init_file => 1); 1 } ? '' : $@;
            return 0 if $e =~ /\Q$file\E/ && $e =~ /other processes have it open/;
            print STDERR "got: $e\n";
            return 3;
        });
        is(FMTest::describe_status($st), 'exit 0',
           'with another process using it: a clear error naming the file');
        ok($c->set('k3', 'x') && $c->get('k3') eq 'x', '... and the user is undisturbed');
        1;
    };
    diag $@ unless $ok;
    system('umount', $mnt);
}

# ------------------------------------------------ read-only directory
SKIP: {
    skip 'needs root to run a child as an unprivileged user', 3 unless $> == 0;
    my $uid = getpwnam('nobody');
    skip 'no user nobody', 3 unless defined $uid;
    chmod 0755, $base;
    my $dir = "$base/rodir";
    mkdir $dir or die;
    my $file = "$dir/c";
    { my $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 3); $c->set('k', 'v') }
    chown $uid, -1, $file or die "chown: $!";
    chmod 0600, $file;
    chmod 0555, $dir;
    my $ino = (stat $file)[1];
    my $st = FMTest::run_in_child(30, sub {
        POSIX::setgid(65534); POSIX::setuid($uid);
        return 2 unless $> == $uid;
        my $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 3, init_file => 1);
        return 3 if defined $c->get('k');
        $c->set('k', 'new');
        undef $c;
        $c = Cache::FastMmap->new(share_file => $file, %G, num_pages => 5);
        return 4 unless $c->set('k', 'five') && $c->get('k') eq 'five';
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0',
       'read-only directory, writable file: init_file and another geometry work');
    is((stat $file)[1], $ino, '... in place');
    is(-s $file, FMTest::file_size(5, $G{page_size}), '... at the new size');
    chmod 0755, $dir;
}

done_testing;
