#!perl
# Hostile share_file paths (issue 5 item 5, DESIGN 4): a symlink is never
# written through, special files and unusable directories give a croak that
# names the path and the reason, a size limit gives a croak (not SIGBUS),
# an empty file is initialised in place and a foreign file is replaced.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use File::Temp ();
use POSIX ();

my %GEOM = (num_pages => 3, page_size => 8192, serializer => '', unlink_on_exit => 0);
my $SIZE = FMTest::file_size($GEOM{num_pages}, $GEOM{page_size});
my $dir = FMTest::tmpdir();

sub slurp { open my $fh, '<:raw', $_[0] or return undef; local $/; scalar <$fh> }
sub spew { open my $fh, '>:raw', $_[0] or die "$_[0]: $!"; print $fh $_[1]; close $fh or die }
sub try_new {
    my (%o) = @_;
    my $c = eval { Cache::FastMmap->new(%GEOM, %o) };
    return ($c, $@);
}
sub leftovers {   # temporary files a failed creation left next to $path
    my ($path) = @_;
    my ($d, $b) = $path =~ m{\A(.*)/([^/]+)\z};
    opendir(my $dh, $d) or return ();
    return grep { /^\Q$b\E./ } readdir $dh;
}

# ---------------------------------------------------------------- symlinks
{
    my $precious = "$dir/precious";
    spew($precious, "precious data\n" x 100);
    my $link = "$dir/link-to-precious";
    symlink($precious, $link) or die "symlink: $!";
    my ($c, $err) = try_new(share_file => $link);
    ok(!$c, 'symlink to an existing file: refused');
    like($err, qr/\Q$link\E/, 'the croak names the path');
    like($err, qr/symbolic link/i, 'and says why');
    is(slurp($precious), "precious data\n" x 100, 'the target was not written');
    ok(-l $link, 'the symlink is still there');

    # init_file => 1 must not write through it either
    ($c, $err) = try_new(share_file => $link, init_file => 1);
    is(slurp($precious), "precious data\n" x 100, 'init_file => 1: the target was not written');
    is(-s $precious, length("precious data\n" x 100), 'init_file => 1: target size unchanged');
    ok(!$c || !-l $link, 'init_file => 1: refused, or the link itself replaced (not followed)');
    undef $c;

    my $dangling = "$dir/dangling";
    symlink("$dir/no-such-target", $dangling) or die;
    ($c, $err) = try_new(share_file => $dangling);
    ok(!$c, 'dangling symlink: refused');
    like($err, qr/\Q$dangling\E/, 'the croak names the path');
    ok(!-e "$dir/no-such-target", 'nothing was created at the link target');
    is_deeply([leftovers($dangling)], [], 'no temporary files left behind');

    my $dirlink = "$dir/dirlink";
    mkdir "$dir/realdir" or die;
    symlink("$dir/realdir", $dirlink) or die;
    ($c, $err) = try_new(share_file => "$dirlink/cache");
    ok($c, 'a symlink in a directory component is fine (only the last one is refused)')
        or diag($err);
}

# ---------------------------------------------------- special files, dirs
{
    my $d = "$dir/a-directory";
    mkdir $d or die;
    my ($c, $err) = try_new(share_file => $d);
    ok(!$c, 'a directory: refused');
    like($err, qr/\Q$d\E/, 'the croak names the path');
    like($err, qr/directory|not a regular file/i, 'and the reason');
    ok(-d $d, 'the directory is untouched');
    ($c, $err) = try_new(share_file => $d, init_file => 1);
    ok(!$c, 'a directory with init_file => 1: refused');
    ok(-d $d, 'and still a directory');

    ($c, $err) = try_new(share_file => '/dev/null');
    ok(!$c, '/dev/null: refused');
    like($err, qr{/dev/null}, 'the croak names the path');
    like($err, qr/not a regular file/i, 'and the reason');
    ok(-c '/dev/null', '/dev/null is still a character device');
    # (never init_file => 1 on the real /dev/null: see the copy below)

    SKIP: {
        my $node = "$dir/null-copy";
        # machine: mknod of a device node needs root (and CAP_MKNOD)
        skip 'cannot mknod (not root?)', 3
            unless system('mknod', $node, 'c', '1', '3') == 0 && -c $node;
        ($c, $err) = try_new(share_file => $node, init_file => 1);
        ok(!$c, 'a character device with init_file => 1: refused')
            or diag('the device node was replaced by a regular file');
        like($err // '', qr/\Q$node\E/, 'the croak names the path');
        ok(-c $node, 'the device node is still a device node');
    }

    my $fifo = "$dir/fifo";
    POSIX::mkfifo($fifo, 0600) or die "mkfifo: $!";
    ($c, $err) = try_new(share_file => $fifo);
    ok(!$c, 'a FIFO: refused (and did not block)');
    like($err, qr/\Q$fifo\E.*not a regular file/i, 'the croak names the path and the reason');
    ($c, $err) = try_new(share_file => $fifo, init_file => 1);
    ok(!$c && -p $fifo, 'a FIFO with init_file => 1: refused, the FIFO left alone')
        or diag('the FIFO was replaced by a regular file');
}

# ------------------------------------------------------------ directories
{
    my $p = "$dir/no/such/dir/cache";
    my ($c, $err) = try_new(share_file => $p);
    ok(!$c, 'a path in a non-existent directory: refused');
    like($err, qr/\Q$p\E/, 'the croak names the path');
    like($err, qr/No such file or directory/, 'and the reason');

    spew("$dir/plainfile", "x");
    $p = "$dir/plainfile/cache";
    ($c, $err) = try_new(share_file => $p);
    ok(!$c, 'a path under a regular file: refused');
    like($err, qr/\Q$p\E.*Not a directory/, 'the croak names the path and the reason');

    ($c, $err) = try_new(share_file => "$dir/nul\0byte");
    ok(!$c, 'a path with a NUL byte: refused');
    like($err, qr/NUL/i, 'the croak says why');

    SKIP: {
        # an unwritable directory (mode 0555, ours).  As root, permissions
        # do not apply, so the child drops to the unprivileged user "nobody".
        my ($uid, $gid) = (getpwnam('nobody'))[2, 3];
        # machine: root without a "nobody" user to drop to
        skip 'running as root and there is no user "nobody"', 3 if $> == 0 && !defined $uid;
        my $ro = File::Temp::tempdir('fmtest-ro-XXXXXX', TMPDIR => 1, CLEANUP => 1);
        chmod 0555, $ro or die "chmod $ro: $!";
        my $target = "$ro/cache";
        pipe(my $r, my $w) or die;
        my $st = FMTest::run_in_child(30, sub {
            close $r;
            if ($> == 0) {
                POSIX::setgid($gid);
                POSIX::setuid($uid);
            }
            return 7 if $> == 0 || $< == 0;     # could not drop root
            my ($c, $err) = try_new(share_file => $target);
            print $w $c ? "CREATED" : $err;
            close $w;
            return 0;
        });
        close $w;
        my $msg = do { local $/; <$r> } // '';
        chmod 0755, $ro;
        # machine: root, but setuid is not permitted (no CAP_SETUID)
        skip 'cannot drop root privileges here', 3 if FMTest::describe_status($st) eq 'exit 7';
        is(FMTest::describe_status($st), 'exit 0', 'unwritable directory: child ran');
        like($msg, qr/\Q$target\E/, 'unwritable directory: the croak names the path');
        like($msg, qr/Permission denied/, 'unwritable directory: and the reason');
    }
}

# --------------------------------------------- file-size limit / full disk
SKIP: {
    # 10 MB cache under a 1000 KB file-size limit, SIGXFSZ ignored: creation
    # must fail with a croak naming the file and the reason, never SIGBUS.
    my $target = "$dir/too-big";
    my $script = <<'EOS';
use strict; $SIG{XFSZ} = 'IGNORE';
require Cache::FastMmap;
my $c = eval { Cache::FastMmap->new(share_file => $ARGV[0], cache_size => '10m',
                                    serializer => '', unlink_on_exit => 0) };
print $c ? "CREATED\n" : "ERR $@";
if ($c) { $c->set("k$_", "v" x 1000) for 1 .. 2000; print "SURVIVED\n" }
EOS
    my @inc = map { "-I$_" } grep { !ref } @INC;
    open my $out, '-|', 'sh', '-c', 'ulimit -f 1000 && exec "$@"', 'sh',
        $^X, @inc, '-e', $script, $target
        or skip "cannot run sh: $!", 6;    # machine: no /bin/sh to set the ulimit
    my $text = do { local $/; <$out> };
    close $out;
    my $st = $?;
    is($st & 127, 0, 'size limit: no signal (no SIGBUS/SIGXFSZ death)')
        or diag("status $st, output: $text");
    like($text, qr/^ERR /, 'size limit: creation croaked') or diag($text);
    like($text, qr/\Q$target\E/, 'size limit: the croak names the file');
    like($text, qr/File too large|No space left/, 'size limit: and the reason');
    ok(!-e $target, 'size limit: no half-made file at the path');
    is_deeply([leftovers($target)], [], 'size limit: no temporary files left behind');
}

# ---------------------------------------------------------- existing files
{
    my $p = "$dir/empty";
    spew($p, '');
    my $ino = (stat $p)[1];
    my $c = Cache::FastMmap->new(%GEOM, share_file => $p);
    is((stat $p)[1], $ino, 'a 0-byte file is initialised in place (same inode)');
    is(-s $p, $SIZE, 'and sized');
    ok($c->set('a', 'b') && $c->get('a') eq 'b', 'and works');

    $p = "$dir/foreign";
    my $junk = join '', map { chr(($_ * 131 + 7) % 256) } 1 .. $SIZE;
    spew($p, $junk);
    $ino = (stat $p)[1];
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    $c = Cache::FastMmap->new(%GEOM, share_file => $p);
    isnt((stat $p)[1], $ino, 'a foreign file of the right size is replaced (new inode)');
    is_deeply([$c->get_keys(0)], [], 'nothing of its content is trusted');
    is($c->repaired_pages, 0, 'a fresh file needs no repairs');
    ok($c->set('a', 'b') && $c->get('a') eq 'b', 'the new file works');

    # the same bytes with a foreign size
    $p = "$dir/foreign-small";
    spew($p, "some text file\n");
    $ino = (stat $p)[1];
    $c = Cache::FastMmap->new(%GEOM, share_file => $p);
    isnt((stat $p)[1], $ino, 'a foreign file of another size is replaced');
    is(-s $p, $SIZE, 'by a file of the right size');
    is_deeply(\@w, [], 'no warnings for replaced files');
}

done_testing;
