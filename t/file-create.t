#!perl
# Creating the share file (issue 10 item 2): creation cannot collide or
# litter. A new file is unnamed (O_TMPFILE) until it is linked into place,
# or, where the filesystem cannot do that, has a random temporary name
# locked by its creator; named temporaries of dead creators are removed.
# Every share_file basename the directory takes works; a file truncated to 0
# while another process has it open is rebuilt by the next new (item 3).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Cwd ();
use Time::HiRes ();

my $base = FMTest::tmpdir();
my %GEOM = (num_pages => 3, page_size => 8192, serializer => '', unlink_on_exit => 0);

sub listing {
    my ($dir) = @_;
    opendir my $dh, $dir or die "$dir: $!";
    return sort grep { !/^\.\.?\z/ } readdir $dh;
}

my $n = 0;
sub fresh_dir { my $d = "$base/d" . ++$n; mkdir $d or die "$d: $!"; return $d }

# ------------------------------------------------------------ long names
for my $len (241, 250, 255) {
    my $dir = fresh_dir();
    my $file = "$dir/" . ('x' x $len);
    my $c = eval { Cache::FastMmap->new(share_file => $file, %GEOM) };
    ok($c, "a $len-byte basename: new works") or diag $@;
    next unless $c;
    ok($c->set('k', 'v') && $c->get('k') eq 'v', "... set and get");
    undef $c;
    $c = eval { Cache::FastMmap->new(share_file => $file, %GEOM, init_file => 1) };
    ok($c && !defined $c->get('k'), "... init_file => 1 replaces it") or diag $@;
    undef $c;
    is_deeply([listing($dir)], ['x' x $len], '... and the directory holds nothing else');
}

# ------------------------------------------------- named temporaries
# A named temporary whose creator died (nobody holds the lock on its byte 0),
# as one is left where O_TMPFILE is not available or between linking and
# renaming a replacement: removed by the next creator, and by the first
# opener of an existing file. Names not of the pattern are left alone.
{
    my $dir = fresh_dir();
    my @stale = map { sprintf ".fmmap-tmp-%016x", $_ } 0xdead, 0xbeef;
    my $keep = '.fmmap-tmp-mine';
    for my $f ($stale[0], $keep) {
        open my $fh, '>', "$dir/$f" or die; print $fh "\0" x 65536; close $fh;
    }
    my $c = Cache::FastMmap->new(share_file => "$dir/a", %GEOM);
    is_deeply([listing($dir)], [$keep, 'a'], 'a creator removes a dead creator\'s temporary');
    undef $c;
    open my $fh, '>', "$dir/$stale[1]" or die; close $fh;
    $c = Cache::FastMmap->new(share_file => "$dir/a", %GEOM);
    is_deeply([listing($dir)], [$keep, 'a'], 'so does the first opener of an existing file');
    # ... but not one whose creator is alive (holds the lock): a child holds it
    undef $c;
    my $live = sprintf ".fmmap-tmp-%016x", 0x11fe;
    SKIP: {
        skip 'OFD locks are Linux-only', 1 unless $^O eq 'linux';
        pipe(my $r2, my $w2) or die;
        pipe(my $go_r, my $go_w) or die;
        my $kid = FMTest::fork_child(30, sub {
            close $r2; close $go_w;
            open my $t, '+>', "$dir/$live" or die "$live: $!";
            my $fl = pack('s s x4 q q i x4', 1, 0, 0, 1, 0);   # F_WRLCK on byte 0
            fcntl($t, 37, $fl) or die "F_OFD_SETLK: $!";
            syswrite $w2, 'L';
            sysread $go_r, my $x, 1;    # until the parent is done
            return 0;
        });
        close $w2; close $go_r;
        sysread $r2, my $got, 1;
        $c = Cache::FastMmap->new(share_file => "$dir/a", %GEOM);
        ok(-e "$dir/$live", 'a temporary its creator still locks is kept');
        close $go_w;
        FMTest::wait_children(30, $kid);
        unlink "$dir/$live";
    }
}

# ------------------------------------------------- killed creators
# Creators SIGKILLed while building a big file leave nothing behind: the file
# has no name until it is complete. (Where the kill lands does not matter to
# the assertion; a creator is killed once it is seen with an unnamed file or
# a temporary open, when that can be seen.)
{
    my $dir = fresh_dir();
    my $file = "$dir/big";
    my %big = (num_pages => 64, page_size => 4 * 1024 * 1024, unlink_on_exit => 0);
    my $seen = 0;
    for my $round (1 .. 5) {
        my $pid = FMTest::fork_child(60, sub {
            Cache::FastMmap->new(share_file => $file, %big, init_file => 1);
            sleep 30;
            return 0;
        });
        my $end = Time::HiRes::time() + 10;
        LOOK: while (Time::HiRes::time() < $end) {
            opendir my $fd, "/proc/$pid/fd" or last;
            for (readdir $fd) {
                my $l = readlink("/proc/$pid/fd/$_") // next;
                if (index($l, $dir) == 0 && ($l =~ /\(deleted\)\z/ || $l =~ /\.fmmap-tmp-/)) {
                    $seen++; last LOOK;
                }
                last LOOK if $l eq $file;
            }
            Time::HiRes::sleep(0.001);
        }
        kill 'KILL', $pid;
        FMTest::wait_children(30, $pid);
    }
    diag "$seen of 5 creators were killed while building" if $seen < 5;
    my $how = 'leave no temporary file';
    if (Cache::FastMmap::_lock_backend() eq 'fcntl') {
        # No O_TMPFILE in the portable build: a killed creator leaves its named
        # temporary, which the next opener of the directory's caches removes.
        Cache::FastMmap->new(share_file => $file, %big);
        $how = 'leave no temporary file once the next opener came';
    }
    my @left = grep { $_ ne 'big' } listing($dir);
    is_deeply(\@left, [], "creators killed while creating $how");
    my $c = Cache::FastMmap->new(share_file => $file, %big);
    ok($c->set('k', 'v') && $c->get('k') eq 'v', 'the next new works');
    is_deeply([listing($dir)], ['big'], '... and the directory holds just the cache');
}

# ------------------------------------------------- truncated while open
{
    my $dir = fresh_dir();
    my $file = "$dir/t";
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    $c->set('k', 'v');
    truncate($file, 0) or die "truncate: $!";
    my $st = FMTest::run_in_child(30, sub {
        my $d = Cache::FastMmap->new(share_file => $file, %GEOM);
        return 3 unless $d->set('k2', 'w') && $d->get('k2') eq 'w';
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0',
       'a file truncated to 0 while a process has it open: the next new works');
    is(-s $file, FMTest::file_size($GEOM{num_pages}, $GEOM{page_size}), '... on a full-size file');
    is_deeply([listing($dir)], ['t'], '... with nothing left behind');
    # ($c is not used again: its mapping lost its pages.)
}

# ------------------------------------------------- PID namespaces
# Two creators that are both PID 1 (of two namespaces) create one new file
# at the same moment: both succeed, and they share it.
SKIP: {
    skip 'PID namespaces are Linux-only', 3 unless $^O eq 'linux';
    my $unshare = (grep { -x } map { "$_/unshare" } qw(/usr/bin /bin))[0];
    skip 'no unshare(1)', 3 unless $unshare;
    my $probe = `$unshare --pid --fork --mount-proc --kill-child $^X -e 'print \$\$' 2>&1`;
    skip "unshare --pid --fork --mount-proc is not allowed here: $probe", 3
        unless defined $probe && $probe eq '1';
    my $dir = fresh_dir();
    my $file = "$dir/ns";
    my @inc = map { ('-I', Cwd::abs_path($_)) } grep { -d } qw(blib/lib blib/arch t/lib);
    my $prog = <<'PERL';
use strict; use warnings; use FMTest; use Time::HiRes ();
my ($file, $go, $tag) = @ARGV;
my $end = time + 30;
Time::HiRes::sleep(0.001) until -e $go || time > $end;
my $c = Cache::FastMmap->new(share_file => $file, num_pages => 3, page_size => 8192,
                             serializer => '', unlink_on_exit => 0);
$c->set($tag, $$);
print "pid=$$\n";
PERL
    my @kids;
    for my $tag (qw(a b)) {
        my $pid = fork // die;
        if (!$pid) {
            open STDOUT, '>', "$dir/$tag.out"; open STDERR, '>&', \*STDOUT;
            { exec $unshare, qw(--pid --fork --mount-proc --kill-child), $^X, @inc,
                   '-e', $prog, $file, "$dir/go", $tag };
            POSIX::_exit(127);
        }
        push @kids, $pid;
    }
    open my $g, '>', "$dir/go" or die; close $g;
    my $st = FMTest::wait_children(60, @kids);
    is_deeply([map { FMTest::describe_status($st->{$_}) } @kids], ['exit 0', 'exit 0'],
              'two PID-1 creators of one new file: both succeed')
        or diag map { `cat $dir/$_.out` } qw(a b);
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM);
    is_deeply([$c->get('a'), $c->get('b')], [1, 1], '... as PID 1, in one shared file');
    is_deeply([grep { !/\.out\z|^go\z/ } listing($dir)], ['ns'], '... and nothing left behind');
}

done_testing;
