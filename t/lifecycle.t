#!perl
# Object lifecycle (SPEC 1.1, 1.8, 2.1, 5.13, 5.14): unlink_on_exit
# defaults, the default share_file, permissions, init_file and geometry
# changes giving a fresh file, methods after cleanup, CLONE, FD_CLOEXEC,
# no fd/mapping leaks, empty_on_exit and children.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Config;
use File::Spec;
use POSIX ();

sub ino { (stat($_[0]))[1] }

# fds of this process that point into our temp dir
sub our_fds {
    my $dir = FMTest::tmpdir();
    my @fds;
    opendir(my $dh, '/proc/self/fd') or return;
    for my $fd (readdir $dh) {
        next unless $fd =~ /^\d+$/;
        my $t = readlink("/proc/self/fd/$fd");
        push @fds, $fd if defined $t && index($t, $dir) == 0;
    }
    return @fds;
}
sub fd_count {
    opendir(my $dh, '/proc/self/fd') or return -1;
    return scalar grep { /^\d+$/ } readdir $dh;
}
sub our_maps {
    my $dir = FMTest::tmpdir();
    open(my $fh, '<', '/proc/self/maps') or return -1;
    return scalar grep { index($_, $dir) >= 0 } <$fh>;
}

# ------------------------------------------------------ unlink_on_exit
{
    my $f = FMTest::share_file();
    my $c = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192);
    ok($c->{unlink_on_exit}, 'new file: unlink_on_exit defaults to true');
    ok(-e $f, 'share file exists while the cache lives');
    undef $c;
    ok(!-e $f, 'new file: unlinked when the object is destroyed');

    my $keep = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                    unlink_on_exit => 0);
    $keep->set('a', 1);
    my $c2 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192);
    ok(!$c2->{unlink_on_exit}, 'existing file: unlink_on_exit defaults to false');
    is($c2->get('a'), 1, 'second object sees the data of the first');
    undef $c2;
    ok(-e $f, 'existing file: kept after destruction');
    my $c3 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                  unlink_on_exit => undef);
    ok(!$c3->{unlink_on_exit}, 'explicit unlink_on_exit => undef means false');
    undef $c3;
    ok(-e $f, '... file kept');
    undef $keep;
    ok(-e $f, 'unlink_on_exit => 0: file kept');
    my $c4 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                  unlink_on_exit => 1);
    undef $c4;
    ok(!-e $f, 'unlink_on_exit => 1 on an existing file: unlinked');

    my $f2 = FMTest::share_file();
    my $c5 = Cache::FastMmap->new(share_file => $f2, num_pages => 3, page_size => 8192,
                                  unlink_on_exit => undef);
    ok(!$c5->{unlink_on_exit}, 'new file with explicit undef: false');
    undef $c5;
    ok(-e $f2, '... file kept');
    unlink $f2;
}

# ------------------------------------------------------ default share_file
{
    local $ENV{TMPDIR} = FMTest::tmpdir();
    my $c = Cache::FastMmap->new(num_pages => 3, page_size => 8192);
    my $dir = FMTest::tmpdir();
    like($c->{share_file}, qr{^\Q$dir\E/sharefile-$$-\d+-\d+\z},
         'default share_file: $TMPDIR/sharefile-PID-TIME-RANDOM');
    my $f = $c->{share_file};
    ok(-e $f, 'default share file created');
    ok($c->{unlink_on_exit}, 'default share file gets unlink_on_exit');
    undef $c;
    ok(!-e $f, 'default share file removed on destruction');
    for my $false (0, '0', '') {
        my $c2 = Cache::FastMmap->new(share_file => $false, num_pages => 1, page_size => 8192);
        like($c2->{share_file}, qr{/sharefile-$$-}, "share_file => '$false' gets the default");
    }
}

# ------------------------------------------------------ permissions
{
    my $old = umask(0);
    my $f = FMTest::share_file();
    my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192);
    is(sprintf('%04o', (stat $f)[2] & 07777), '0640', 'default mode 0640 (umask 0)');
    undef $c;
    for my $p (0600, 0666, 0604) {
        $f = FMTest::share_file();
        $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192, permissions => $p);
        is(sprintf('%04o', (stat $f)[2] & 07777), sprintf('%04o', $p), sprintf('permissions => 0%o honoured', $p));
        undef $c;
    }
    umask(022);
    $f = FMTest::share_file();
    $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192, permissions => 0666);
    is(sprintf('%04o', (stat $f)[2] & 07777), '0644', 'the umask applies (0666 & ~022)');
    undef $c;
    umask($old);
}

# ------------------------------------------------------ init_file / geometry change
{
    my $f = FMTest::share_file();
    my $c1 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                  unlink_on_exit => 0, serializer => '');
    $c1->set('foo', 'old');
    my $ino1 = ino($f);
    my $c2 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                  init_file => 1, serializer => '');
    isnt(ino($f), $ino1, 'init_file => 1: a new inode');
    is($c2->get('foo'), undef, 'init_file => 1: the new cache is empty');
    is(scalar(my @k = $c2->get_keys(0)), 0, '... no keys at all');
    is($c1->get('foo'), 'old', 'the old object keeps using the old file');
    $c2->set('bar', 'new');
    my $c3 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192, serializer => '');
    is($c3->get('bar'), 'new', 'a later attach (init_file 0) sees the new file');
    is($c3->get('foo'), undef, '... not the old data');
    my $ino2 = ino($f);

    # a different geometry also gives a fresh file
    my $c4 = Cache::FastMmap->new(share_file => $f, num_pages => 5, page_size => 8192, serializer => '');
    isnt(ino($f), $ino2, 'different geometry: file replaced (new inode)');
    is($c4->get('bar'), undef, 'different geometry: starts empty');
    is($c3->get('bar'), 'new', 'old attachers keep their file');
    undef $_ for $c1, $c2, $c3, $c4;
    unlink $f;
}

# ------------------------------------------------------ after cleanup
{
    my $c = FMTest::new_cache(num_pages => 1, page_size => 8192);
    my $f = $c->{share_file};
    $c->set('a', 1);
    $c->cleanup;
    ok(!-e $f, 'cleanup unlinks (unlink_on_exit)');
    ok(eval { $c->cleanup; 1 }, 'cleanup is idempotent');
    for my $m ([get => 'a'], [set => 'a', 1], [remove => 'a'], [get_and_set => 'a', sub { 1 }],
               [get_keys => 0], [clear => ()], [multi_get => 'p', ['a']]) {
        my ($name, @args) = @$m;
        my $ok = eval { $c->$name(@args); 1 };
        ok(!$ok, "$name after cleanup croaks");
        like($@, qr/Object not reference/, "... 'Object not reference'") unless $ok;
    }
    undef $c;   # DESTROY after cleanup must be harmless
    pass('DESTROY after cleanup survived');
}

# run perl with the given arguments, stdout+stderr captured, bounded by alarm
sub run_perl {
    my @args = @_;
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open(STDERR, '>&', \*STDOUT);
        alarm 60;
        exec($^X, @args) or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return $out // '';
}

# ------------------------------------------------------ CLONE / threads
SKIP: {
    # machine: a perl built without ithreads has no CLONE to test
    skip 'perl without ithreads', 4 unless $Config{useithreads};
    my @I = map { "-I$_" } grep { !ref } @INC;
    my $ctl = run_perl(@I, '-e', 'require threads; threads->create(sub { 1 })->join; print "survived\n"');
    # machine: threads fail here even without Cache::FastMmap loaded
    skip "threads not usable here: $ctl", 4 unless $ctl =~ /survived/;
    pass('control: threads work without Cache::FastMmap');
    my $out = run_perl(@I, '-e', <<'CODE');
use threads;
use Cache::FastMmap;
print "loaded $INC{'Cache/FastMmap.pm'}\n";
my $t = threads->create(sub { 1 });
$t->join if $t;
print "survived\n";
CODE
    my $pm = $INC{'Cache/FastMmap.pm'};
    like($out, qr{^loaded \Q$pm\E$}m, 'subprocess loaded the same module');
    # Threads are supported now (t/threads.t tests them in depth).
    unlike($out, qr/does not support threads/, 'creating a thread does not die in CLONE');
    like($out, qr/survived/, '... and the program carries on');
}

# ------------------------------------------------------ FD_CLOEXEC
SKIP: {
    # machine: no procfs (a kernel feature) to list fds and their flags
    skip 'no /proc/self/fd', 4 unless -d '/proc/self/fd' && -r '/proc/self/fdinfo';
    is(scalar(our_fds()), 0, 'no share-file fds before');
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    my @fds = our_fds();
    ok(@fds >= 1, 'the cache holds an fd on its share file (' . scalar(@fds) . ')');
    my @noexec;
    for my $fd (@fds) {
        open(my $fi, '<', "/proc/self/fdinfo/$fd") or next;
        my ($flags) = map { /^flags:\s*([0-7]+)/ ? oct($1) : () } <$fi>;
        push @noexec, $fd unless defined $flags && ($flags & 02000000);   # O_CLOEXEC
    }
    is("@noexec", '', 'every share-file fd has FD_CLOEXEC');
    my $dir = FMTest::tmpdir();
    my $listing = run_perl('-e', 'opendir my $d, "/proc/self/fd"; print map { (readlink("/proc/self/fd/$_") // "") . "\n" } grep /^\d+$/, readdir $d');
    like($listing, qr{^/}m, 'the exec\'d program listed its fds');
    unlike($listing, qr/^\Q$dir\E/m, 'an exec\'d program inherits no share-file fd');
    undef $c;
}

# ------------------------------------------------------ no fd / mapping leaks
SKIP: {
    # machine: no procfs (a kernel feature) to count fds and mappings
    skip 'no /proc/self/fd', 3 unless -d '/proc/self/fd';
    { my $w = FMTest::new_cache(num_pages => 3, page_size => 8192); $w->set('a', 1); $w->get('a') }
    my ($fd0, $maps0) = (fd_count(), our_maps());
    my $f = FMTest::share_file();
    for my $i (1 .. 200) {
        my $c = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192,
                                     init_file => ($i % 2));
        $c->set("k$i", $i);
        $c->get("k$i");
        $c->get_keys(0);
        $c->cleanup if $i % 3 == 0;
    }
    is(fd_count(), $fd0, '200 new/DESTROY cycles: no fd leaked');
    is(our_maps(), $maps0, '... no share-file mapping left');
    is(scalar(our_fds()), 0, '... no fd on share files left');
}

# 2000 constructions and destructions must not grow the process (SPEC 5.13:
# under 500 KB); measured after a warm-up so that allocator pools settle.
SKIP: {
    # machine: no procfs (a kernel feature) to read the RSS from
    skip 'no /proc/self/status', 1 unless -r '/proc/self/status';
    my $rss = sub {
        open(my $fh, '<', '/proc/self/status') or return 0;
        for (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
        return 0;
    };
    my $f = FMTest::share_file();
    my $cycle = sub {
        for my $i (1 .. $_[0]) {
            my $c = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192);
            $c->set("k$i", $i);
            $c->get("k$i");
        }
    };
    $cycle->(200);
    my $before = $rss->();
    $cycle->(2000);
    my $grown = $rss->() - $before;
    ok($grown < 500, "2000 new/DESTROY cycles grow RSS by under 500 KB (grew ${grown} KB)");
}

# ------------------------------------------------------ empty_on_exit, children
{
    my @wb;
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, empty_on_exit => 1,
        write_action => 'write_back', write_cb => sub { push @wb, $_[1] }, unlink_on_exit => 0);
    my $f = $c->{share_file};
    $c->set("d$_", $_) for 1 .. 5;

    # a child that exits normally (END, DESTROY) must neither empty nor unlink
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        alarm 30;
        undef $c;
        exit 0;
    }
    my $st = FMTest::wait_children(40, $pid);
    is(FMTest::describe_status($st->{$pid}), 'exit 0', 'child exited cleanly');
    ok(-e $f, 'child exit did not unlink the file');
    is(scalar(@wb), 0, 'child exit did not write back (no empty)');
    is(scalar(grep { defined $c->get("d$_") } 1 .. 5), 5, 'child exit did not empty the cache');

    undef $c;
    is_deeply([sort @wb], [map { "d$_" } 1 .. 5], 'creator DESTROY with empty_on_exit wrote back every dirty entry');
    my $c2 = Cache::FastMmap->new(share_file => $f, num_pages => 3, page_size => 8192);
    is(scalar(my @k = $c2->get_keys(0)), 0, 'and emptied the cache');
    undef $c2;
    unlink $f;
}

# %LiveCaches tracks every empty_on_exit cache (1.62+)
{
    my $a = FMTest::new_cache(num_pages => 1, page_size => 8192, empty_on_exit => 1);
    my $b = FMTest::new_cache(num_pages => 1, page_size => 8192, empty_on_exit => 1);
    my $n = grep { defined } values %Cache::FastMmap::LiveCaches;
    is($n, 2, 'two empty_on_exit caches alive: 2 in %LiveCaches');
    undef $a;
    $n = grep { defined } values %Cache::FastMmap::LiveCaches;
    is($n, 1, 'one destroyed: 1 left');
}

done_testing;
