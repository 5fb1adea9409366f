#!perl
# The fastmmap command (issue 14): info / verify / keys / stats / repair.
#
#  1. A sound file: verify exits 0; info, keys and stats report what was
#     stored (and --json parses); nothing about the file changes.
#  2. Damaged files: a page scribbled over -> verify exits 1 naming the page
#     and the problem; a damaged header, a foreign file, an empty file ->
#     exit 1 with the reason; a missing file, a directory, a symlink, a bad
#     command -> exit 2.  Never a crash (no signal).
#  3. repair: refused (exit 2) while a cache has the file open; offline it
#     rebuilds the damaged page, keeps the sound entries, and verify is then
#     sound; the repair is counted.
#  4. A live file under writers: verify and keys run while child processes
#     write continuously; every run exits 0 (a busy page is "not checked",
#     never "damaged"), and the writers are not disturbed.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use File::Spec;
use Digest::MD5 ();
use POSIX ();

my $SCRIPT = File::Spec->catfile($FMTest::ROOT, 'script', 'fastmmap');
ok(-f $SCRIPT, 'script/fastmmap is there');

# Runs the command in a child perl that loads this checkout's build (the
# same @INC as this test); returns (exit status, stdout, stderr).
sub run_cmd {
    my @args = @_;
    my $out = FMTest::share_file('out');
    my $err = FMTest::share_file('err');
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open(STDOUT, '>', $out) or POSIX::_exit(99);
        open(STDERR, '>', $err) or POSIX::_exit(99);
        alarm 120;
        exec($^X, (map { "-I$_" } grep { !ref } @INC), $SCRIPT, @args) or POSIX::_exit(98);
    }
    my $st = FMTest::wait_children(150, $pid)->{$pid};
    my $slurp = sub { open(my $fh, '<', $_[0]) or return ''; local $/; my $s = <$fh>; unlink $_[0]; $s };
    return ($st, $slurp->($out), $slurp->($err));
}

sub md5_of { open(my $fh, '<', $_[0]) or die; binmode $fh; Digest::MD5->new->addfile($fh)->hexdigest }

my %GEO = (num_pages => 5, page_size => 16384, serializer => q());

# ---- 1. a sound file
my $file = FMTest::share_file('sound');
{
    my $c = Cache::FastMmap->new(share_file => $file, init_file => 1, unlink_on_exit => 0, %GEO);
    $c->set("key$_", 'v' x $_) for 1 .. 40;
    $c->set("\x{263a}smile", 'u');
    $c->get("key$_") for 1 .. 10;
    $c->get('missing');
    undef $c;
}
my $sum = md5_of($file);
{
    my ($st, $out, $err) = run_cmd('verify', $file);
    is($st, 0, 'verify: a sound file exits 0') or diag $err;
    like($out, qr/sound \(5 of 5 pages checked\)/, 'verify says sound');

    ($st, $out, $err) = run_cmd('info', $file);
    is($st, 0, 'info exits 0') or diag $err;
    like($out, qr/^format\s+4$/m, 'info: format version');
    like($out, qr/num_pages 5, page_size 16384/, 'info: geometry');
    like($out, qr/^entries\s+41 live, 0 expired, 0 tombstones, 0 dirty$/m, 'info: entries');
    like($out, qr/^in use\s+no$/m, 'info: nobody has it open');
    my @bars = $out =~ /^\s+\d+-\s*\d+%/mg;
    is(scalar @bars, 10, 'info: a ten-bucket fill histogram');

    ($st, $out, $err) = run_cmd('keys', $file);
    is($st, 0, 'keys exits 0') or diag $err;
    my @lines = split /\n/, $out;
    is(scalar @lines, 41, 'keys: one line per entry');
    like($out, qr/^key7\t7 bytes\texpires never\t/m, 'keys: key, size, expiry');
    like($out, qr/smile\t1 bytes.*utf8_key/, 'keys: flags shown');

    ($st, $out, $err) = run_cmd('stats', $file);
    is($st, 0, 'stats exits 0') or diag $err;
    like($out, qr/^entries\s+41$/m, 'stats: entries');
    like($out, qr/^reads\s+11$/m, 'stats: reads made by the closed cache');
    like($out, qr/^hits\s+10$/m, 'stats: hits');
    like($out, qr/^capacity_bytes\s+81920$/m, 'stats: capacity');

    SKIP: {
        skip 'JSON::PP not installed', 6 unless FMTest::have_module('JSON::PP');
        my $j = JSON::PP->new->utf8;
        ($st, $out) = run_cmd('info', '--json', $file);
        my $info = eval { $j->decode($out) };
        is($info->{entries}, 41, 'info --json: entries');
        is($info->{page_size}, 16384, 'info --json: page_size');
        ($st, $out) = run_cmd('keys', '--json', $file);
        my $keys = eval { $j->decode($out) } || [];
        is(scalar @$keys, 41, 'keys --json: every entry');
        is((grep { ($_->{key} // '') eq "\x{263a}smile" } @$keys), 1, 'keys --json: a UTF-8 key as text');
        ($st, $out) = run_cmd('stats', '--json', $file);
        is(eval { $j->decode($out)->{hits} }, 10, 'stats --json: hits');
        ($st, $out) = run_cmd('verify', '--json', $file);
        ok(eval { $j->decode($out)->{sound} }, 'verify --json: sound');
    }

    # The header the command reads (Cache::FastMmap::Inspect) gives the
    # layout that FMTest's offsets, used below to damage the file, assume:
    # each page's lock entry just before the page, one page_stride apart.
    my $ins = Cache::FastMmap::Inspect->open($file);
    my $hdr = $ins->header || {};
    my ($np, $ps) = @GEO{qw(num_pages page_size)};
    is($hdr->{page_stride}, FMTest::LOCK_ENTRY_BYTES + $ps, 'Inspect header: page_stride is lock entry + page');
    is($hdr->{lock_table_offset}, FMTest::lock_entry_off($ps, 0), "Inspect header: page 0's lock entry");
    is($hdr->{pages_offset}, FMTest::page_off($ps, 0), 'Inspect header: page 0');
    is(($hdr->{pages_offset} // 0) + ($np - 1) * ($hdr->{page_stride} // 0), FMTest::page_off($ps, $np - 1),
       'Inspect header: the last page is a stride per page on');
    is($hdr->{file_size}, FMTest::file_size($np, $ps), 'Inspect header: file size');
    is($hdr->{format_version}, 4, 'Inspect header: format version');
    undef $ins;
    is(md5_of($file), $sum, 'none of that changed a byte of the file');
}

# ---- 2. damaged files
sub poke {
    my ($f, $off, $bytes) = @_;
    open(my $fh, '+<', $f) or die "open $f: $!";
    binmode $fh;
    sysseek($fh, $off, 0) or die;
    syswrite($fh, $bytes) == length $bytes or die;
    close $fh;
}
{
    my $bad = FMTest::share_file('bad');
    system('cp', $file, $bad) == 0 or die;
    poke($bad, FMTest::page_off($GEO{page_size}, 2) + 4, "\xFF\xFF\xFF\x7F");     # page 2's slot count
    my ($st, $out, $err) = run_cmd('verify', $bad);
    is($st >> 8, 1, 'verify: a damaged page exits 1');
    is($st & 127, 0, '... not by a signal');
    like($out, qr/^page 2: damaged: slot count \d+ does not fit the page$/m, 'names the page and the problem');
    like($out, qr/damaged: 1 of 5 pages \(2\)/, 'summary');
    ($st, $out) = run_cmd('info', $bad);
    is($st >> 8, 1, 'info on a damaged file exits 1');
    like($out, qr/^damaged pages\s+2 /m, 'info lists the damaged page');

    # A lock entry scribbled over (page 4) is reported too.
    my $lk = FMTest::share_file('badlock');
    system('cp', $file, $lk) == 0 or die;
    poke($lk, FMTest::lock_entry_off($GEO{page_size}, 4), "\xFF" x 48);
    # (The fcntl backend keeps no mutex there, only a holder record after these bytes:
    # nothing of what is scribbled over is read.)
    my $mutex_entries = Cache::FastMmap::_lock_backend() eq 'robust-mutex';
    ($st, $out) = run_cmd('verify', $lk);
    SKIP: {
        skip 'the fcntl backend has no mutex in a lock entry to damage', 2 unless $mutex_entries;
        is($st >> 8, 1, 'verify: a damaged lock entry exits 1');
        like($out, qr/^page 4: damaged: lock entry is not a mutex of this build/m, 'names it');
    }

    my %hostile = (
        'damaged header'  => sub { poke($_[0], 20, "\x01\x00\x00\x00") },
        'foreign file'    => sub { open(my $fh, '>', $_[0]) or die; print $fh 'x' x 100000; close $fh },
        'empty file'      => sub { open(my $fh, '>', $_[0]) or die; close $fh },
        'truncated file'  => sub { truncate($_[0], 10000) or die },
    );
    my %want = ('damaged header' => qr/checksum/, 'foreign file' => qr/bad magic/,
                'empty file' => qr/shorter than/, 'truncated file' => qr/its header says/);
    for my $what (sort keys %hostile) {
        my $h = FMTest::share_file('hostile');
        system('cp', $file, $h) == 0 or die;
        $hostile{$what}->($h);
        for my $cmd (qw(verify info keys stats)) {
            my ($st, $out, $err) = run_cmd($cmd, $h);
            is($st, 1 << 8, "$what: $cmd exits 1");
            like($out . $err, $want{$what}, "$what: $cmd says why") if $cmd eq 'verify';
        }
        my ($st, $out, $err) = run_cmd('repair', $h);
        is($st, 2 << 8, "$what: repair refuses (exit 2)");
        like($err, qr/cannot be repaired.*remove the file/s, "$what: and says what to do");
    }

    my ($st2, $o2, $e2) = run_cmd('verify', FMTest::share_file('nonexistent'));
    is($st2, 2 << 8, 'a missing file exits 2');
    like($e2, qr/cannot open .*No such file/, '... naming it');
    ($st2, $o2, $e2) = run_cmd('info', FMTest::tmpdir());
    is($st2, 2 << 8, 'a directory exits 2');
    like($e2, qr/not a regular file/, '... saying so');
    my $link = FMTest::share_file('link');
    symlink($file, $link) or die "symlink: $!";
    ($st2, $o2, $e2) = run_cmd('info', $link);
    is($st2, 2 << 8, 'a symbolic link exits 2');
    like($e2, qr/symbolic link/, '... saying so');
    ($st2, $o2, $e2) = run_cmd('frobnicate', $file);
    is($st2, 2 << 8, 'an unknown command exits 2');
    like($e2, qr/unknown command 'frobnicate'.*usage:/s, '... with the usage');
    ($st2) = run_cmd('verify');
    is($st2, 2 << 8, 'no FILE exits 2');

    # ---- 3. repair
    my $c = Cache::FastMmap->new(share_file => $bad, unlink_on_exit => 0, %GEO);
    ($st, $out, $err) = run_cmd('repair', $bad);
    is($st, 2 << 8, 'repair refuses while a cache has the file open');
    like($err, qr/open in other processes/, '... saying why');
    undef $c;
    ($st, $out, $err) = run_cmd('repair', $bad);
    is($st, 0, 'repair offline exits 0') or diag $err;
    like($out, qr/^page 2: repaired \(slot count/m, 'it names the page it repaired');
    ($st, $out) = run_cmd('verify', $bad);
    is($st, 0, 'the repaired file verifies sound') or diag $out;
    ($st, $out) = run_cmd('stats', $bad);
    like($out, qr/^repairs\s+1$/m, 'the repair is counted');
    $c = Cache::FastMmap->new(share_file => $bad, unlink_on_exit => 0, %GEO);
    my $lost = grep { !defined $c->get("key$_") } 1 .. 40;
    my $page2 = grep { (Cache::FastMmap::fc_hash($c->{Cache}, "key$_"))[0] == 2 } 1 .. 40;
    is($lost, $page2, 'the entries of the other pages are all still there');
    ($st, $out) = run_cmd('repair', $lk);
    is($st, 0, 'repair of a damaged lock entry');
    SKIP: {
        skip 'the fcntl backend has no mutex in a lock entry to rewrite', 1 unless $mutex_entries;
        like($out, qr/^page 4: lock entry rewritten/m, '... says so');
    }
    ($st) = run_cmd('verify', $lk);
    is($st, 0, '... and it verifies sound');
}

# ---- 4. a live file under writers
{
    my $live = FMTest::share_file('live');
    my %o = (share_file => $live, num_pages => 3, page_size => 8192, unlink_on_exit => 0);
    Cache::FastMmap->new(%o, init_file => 1)->set(seed => 1);
    my $go = FMTest::barrier();
    pipe(my $stop_r, my $stop_w) or die;
    my @pids = map {
        my $n = $_;
        FMTest::fork_child(120, sub {
            close $stop_w;
            my $c = Cache::FastMmap->new(%o);
            $go->wait;
            my $rin = '';
            vec($rin, fileno($stop_r), 1) = 1;
            my $i = 0;
            while (1) {
                for (1 .. 50) {
                    $i++;
                    $c->set("w$n-" . ($i % 300), 'x' x ($i % 200));
                    $c->remove("w$n-" . (($i * 7) % 300)) if $i % 5 == 0;
                }
                last if select(my $r = $rin, undef, undef, 0);
            }
            return 0;
        });
    } 1 .. 2;
    close $stop_r;
    $go->release;
    my ($fails, $runs) = (0, 0);
    for my $round (1 .. 3) {
        for my $cmd (qw(verify keys info)) {
            my ($st, $out, $err) = run_cmd($cmd, $live);
            $runs++;
            if ($st != 0) { $fails++; diag "$cmd under writers: status $st\n$out$err" }
        }
    }
    is($fails, 0, "verify, keys and info under live writers: $runs runs, all exit 0");
    close $stop_w;
    my $st = FMTest::wait_children(60, @pids);
    is(FMTest::describe_status($st->{$_}), 'exit 0', "writer $_ undisturbed") for @pids;
    my ($vst, $vout) = run_cmd('verify', $live);
    is($vst, 0, 'and once they stopped, the file is sound');
    like($vout, qr/sound \(3 of 3 pages checked\)/, 'every page checked');
}

done_testing;
