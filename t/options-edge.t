# Constructor options at their edges: catch_deadlocks, test_file,
# permissions, unknown options, share_file validation, unlink_on_exit
# defaults (SPEC 1.1, 1.8, risk 9 and 13).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Time::HiRes ();

sub mode_of { sprintf '%04o', (stat $_[0])[2] & 07777 }

# ----------------------------------------------------------- catch_deadlocks
# A child takes the page lock (inside a get_and_set callback) and never lets
# go.  A second process with catch_deadlocks must get a clear croak after the
# 10 s timed lock instead of hanging, and its own pending alarm must survive.
{
    my $f = FMTest::share_file('deadlock');
    my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192,
        serializer => '', catch_deadlocks => 1);
    $c->set('k', 'v');

    pipe(my $r, my $w) or die "pipe: $!";
    my $holder = FMTest::fork_child(60, sub {
        close $r;
        $c->get_and_set('k', sub {
            syswrite($w, "locked\n");
            sleep 1 while 1;      # killed by the parent (or by its alarm)
        });
        return 9;
    });
    close $w;
    my $line = '';
    {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 20;
        eval { $line = <$r> // ''; 1 };
        alarm 0;
    }
    close $r;
    is($line, "locked\n", 'child holds the page lock');

    my $res = FMTest::share_file('deadlock-result');
    my $waiter = FMTest::fork_child(30, sub {
        # fork_child armed alarm(30) with the default action: if the lock
        # call hangs, the kernel kills us and the test below fails.
        my $t = Time::HiRes::time();
        # a set must take the page lock (a get may read without it)
        my $ok = eval { $c->set('k', 'new'); 1 };
        my $err = $@;
        my $left = alarm(0);
        my $took = Time::HiRes::time() - $t;
        open my $fh, '>', $res or return 8;
        print $fh join("\t", $ok ? 'returned' : 'died', $left, sprintf('%.1f', $took),
            Cache::FastMmap::fc_is_locked($c->{Cache}) ? 1 : 0, $err);
        close $fh;
        return 0;
    });
    my $st = FMTest::wait_children(40, $waiter)->{$waiter};
    is(FMTest::describe_status($st), 'exit 0', 'the waiting process did not hang (bounded by alarm 30)');

    kill 'KILL', $holder;
    my $hst = FMTest::wait_children(20, $holder)->{$holder};
    is(FMTest::describe_status($hst), 'signal 9', 'lock holder reaped');

    my ($how, $left, $took, $locked, $err) = ('', 0, 0, '', '');
    if (open my $fh, '<', $res) {
        local $/;
        ($how, $left, $took, $locked, $err) = split /\t/, <$fh>, 5;
    }
    is($how, 'died', 'catch_deadlocks: the blocked set croaks');
    like($err, qr/lock/i, '... with a message about the lock');
    like($err, qr/timed out|deadlock/i, '... saying that it timed out') or diag $err;
    unlike($err, qr/^Alarm|SIGALRM/, '... not an alarm');
    cmp_ok($took, '>=', 9.5, "... after waiting for the timeout (took ${took}s)");
    ok($left > 0, "the caller's own alarm was not clobbered ($left s left)");
    is($locked, 0, 'no lock is held after the croak');
}

# ----------------------------------------------------------------- test_file
{
    my $f = FMTest::share_file('testfile');
    my $a = Cache::FastMmap->new(share_file => $f, num_pages => 5, page_size => 8192, serializer => '');
    $a->set("k$_", "v$_") for 1 .. 50;
    my @warn;
    local $SIG{__WARN__} = sub { push @warn, @_ };
    my $b = Cache::FastMmap->new(share_file => $f, num_pages => 5, page_size => 8192,
        serializer => '', test_file => 1);
    is(scalar @warn, 0, 'test_file => 1 on a healthy file: no warnings') or diag @warn;
    is(scalar(grep { ($b->get("k$_") // '') eq "v$_" } 1 .. 50), 50, '... all data kept');
    is($b->repaired_pages, 0, '... no page repaired') if $b->can('repaired_pages');
    $b->set('new', 'x');
    is($a->get('new'), 'x', '... both objects share the file');
}

# --------------------------------------------------------------- permissions
{
    my $old = umask 0;
    my %cases = (
        'default'          => [ [],                       '0640' ],
        '0600'             => [ [ permissions => 0600 ],  '0600' ],
        '0666'             => [ [ permissions => 0666 ],  '0666' ],
        '384 (decimal)'    => [ [ permissions => 384 ],   '0600' ],
    );
    for my $name (sort keys %cases) {
        my ($opts, $want) = @{ $cases{$name} };
        my $f = FMTest::share_file("perm-$name");
        my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192, @$opts);
        is(mode_of($f), $want, "permissions $name: file mode $want (umask 0)");
    }
    {
        # the string '0600' is read as the decimal number 600 (01130)
        my $f = FMTest::share_file('perm-string');
        my $c = eval { Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192,
            permissions => '0600') };
        if ($> == 0) {
            is(sprintf('%04o', (stat $f)[2] & 0777), sprintf('%04o', 600 & 0777),
                "permissions => '0600' (a string) means decimal 600, as upstream");
        }
        else {
            # 0130 gives the owner no read or write permission: like
            # upstream, opening the created file read-write then fails
            # (root is not bound by the mode).
            like($@, qr/\AOpen of share file \Q$f\E failed: Permission denied/,
                "permissions => '0600' (a string) means decimal 600: not even the owner can open it");
        }
    }
    {
        my $f = FMTest::share_file('perm-existing');
        my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192,
            permissions => 0600);
        my $d = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192,
            permissions => 0666);
        is(mode_of($f), '0600', 'permissions only apply when the file is created');
    }
    umask 022;
    {
        my $f = FMTest::share_file('perm-umask');
        my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192,
            permissions => 0666);
        is(mode_of($f), '0644', 'the umask applies (0666 with umask 022 gives 0644)');
    }
    umask $old;
}

# ------------------------------------------------------------ unknown options
{
    my @warn;
    local $SIG{__WARN__} = sub { push @warn, @_ };
    my $c = FMTest::new_cache(no_such_option => 1, another => [ 1, 2 ], Cache => 'ignored?',
        expire => 5, size => '1m');
    ok($c, 'unknown options are accepted');
    is(scalar @warn, 0, '... silently');
    ok($c->set('a', 1) && $c->get('a') == 1, '... and the cache works');
    is($c->{num_pages} * $c->{page_size}, 89 * 65536, '... with the default geometry');
    my $h = Cache::FastMmap->new({ share_file => FMTest::share_file('hashref'), num_pages => 3, bogus => 1 });
    is($h->{num_pages}, 3, 'a hash reference of options works too');
}

# ------------------------------------------------------- share_file checks
for my $ref (\"ref", [ 'x' ], { a => 1 }) {
    my $ok = eval { Cache::FastMmap->new(share_file => $ref); 1 };
    ok(!$ok, 'share_file => ' . ref($ref) . ' ref dies');
    like($@, qr/^share_file argument was a reference at /, '... with the upstream message');
}

# ------------------------------------------------------ unlink_on_exit rules
{
    my $f = FMTest::share_file('uoe');
    my $c = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192);
    is($c->{unlink_on_exit}, 1, 'new file, option absent: unlink_on_exit 1');
    my $d = Cache::FastMmap->new(share_file => $f, num_pages => 1, page_size => 8192);
    is($d->{unlink_on_exit}, 0, 'existing file, option absent: 0');
    undef $d;
    ok(-e $f, '... destroying the attacher keeps the file');

    # a forked child's exit never unlinks, even with unlink_on_exit
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) { $SIG{ALRM} = 'DEFAULT'; alarm 20; undef $c; exit 0 }
    my $st = FMTest::wait_children(25, $pid)->{$pid};
    is(FMTest::describe_status($st), 'exit 0', 'child destroyed its copy and exited');
    ok(-e $f, "... the child's exit did not unlink the file");

    undef $c;
    ok(!-e $f, 'the creator unlinks at destruction');

    my $g = FMTest::share_file('uoe-undef');
    my $e = Cache::FastMmap->new(share_file => $g, num_pages => 1, page_size => 8192, unlink_on_exit => undef);
    ok(!$e->{unlink_on_exit}, 'new file, explicit undef: false (the key is present)');
    undef $e;
    ok(-e $g, '... file kept');

    my $h = Cache::FastMmap->new(share_file => $g, num_pages => 1, page_size => 8192, unlink_on_exit => 1);
    undef $h;
    ok(!-e $g, 'existing file with unlink_on_exit => 1: unlinked');

    my $i = FMTest::share_file('uoe-zero');
    my $j = Cache::FastMmap->new(share_file => $i, num_pages => 1, page_size => 8192, unlink_on_exit => 0);
    undef $j;
    ok(-e $i, 'new file with unlink_on_exit => 0: kept');

    my $k = Cache::FastMmap->new(share_file => $i, num_pages => 1, page_size => 8192, init_file => 1);
    is($k->{unlink_on_exit}, 0, 'init_file on an existing file: default decided before the file is recreated (0)');
}

done_testing;
