package FMTest;

# Shared helper for the Cache::FastMmap test suite.
#
# Loading this module loads Cache::FastMmap and refuses (BAIL_OUT) to go on
# unless the module that got loaded is the Rust-core build of THIS checkout
# (blib/ after `make`, or lib/ with `prove -bl`), never an installed copy
# such as Debian's /usr/lib/.../Cache/FastMmap.pm.
#
# It also provides temp-file helpers and bounded fork helpers: every child
# started through fork_child() arms alarm() with the default SIGALRM action
# (so a child stuck in a blocking lock is killed by the kernel), and
# wait_children() reaps every child against a deadline and SIGKILLs any
# leftover.

use strict;
use warnings;
use Test::More ();
use Cwd ();
use File::Basename ();
use File::Spec ();
use File::Temp ();
use POSIX ();
use Time::HiRes ();

our $ROOT;
BEGIN {
    my $here = File::Basename::dirname(Cwd::abs_path(__FILE__));
    $ROOT = Cwd::abs_path(File::Spec->catdir($here, File::Spec->updir, File::Spec->updir));
}

require Cache::FastMmap;

# The page layout, for tests that read or damage a share file's bytes (see
# rust/page/mod.rs): a 32-byte page header (slot count at 4), then 8-byte
# slots whose first u32 is 0 (empty), 1 (deleted) or the offset of an item
# in the page; an item has a 24-byte header (key and value lengths at 16
# and 20), then the key, then the value.
use constant PAGE_HEADER_BYTES => 32;
use constant SLOT_BYTES        => 8;

# Offset in a page of slot $i.
sub slot_pos { PAGE_HEADER_BYTES + SLOT_BYTES * $_[0] }

# The file layout (format version 4, see rust/file.rs Layout): a 4096-byte
# file header, then for every page n its 64-byte lock entry immediately
# followed by the page itself, so consecutive pages (and lock entries) are
# 64 + page_size bytes apart -- Inspect's header() calls this page_stride,
# and its lock_table_offset and pages_offset are the offsets of page 0's
# lock entry and of page 0. In a lock entry the mutex comes first (glibc:
# the futex word at 0, its owner at 8), then at 52 the holder record (the
# robust backend: the holder's opener slot + 1; fcntl: the holder's pid), at
# 56 the "being mutated" marker and at 60 the change counter (odd while a
# change is under way).
use constant FILE_HEADER_BYTES => 4096;
use constant LOCK_ENTRY_BYTES  => 64;

# File offset of page $n's lock entry, in a file of $page_size pages.
sub lock_entry_off {
    my ($page_size, $n) = @_;
    return FILE_HEADER_BYTES + $n * (LOCK_ENTRY_BYTES + $page_size);
}

# File offset of page $n.
sub page_off {
    my ($page_size, $n) = @_;
    return lock_entry_off($page_size, $n) + LOCK_ENTRY_BYTES;
}

# Size of a share file of $num_pages pages of $page_size bytes.
sub file_size {
    my ($num_pages, $page_size) = @_;
    return FILE_HEADER_BYTES + $num_pages * (LOCK_ENTRY_BYTES + $page_size);
}

sub _under {
    my ($path, $dir) = @_;
    return 0 unless defined $path && -e $path && -d $dir;
    my $p = Cwd::abs_path($path);
    my $d = Cwd::abs_path($dir);
    return 0 unless defined $p && defined $d;
    return index($p, "$d/") == 0 ? 1 : 0;
}

# Returns a list of problems; empty when the loaded module is our build.
sub build_problems {
    my @p;
    my $impl = $Cache::FastMmap::IMPLEMENTATION;
    push @p, "\$Cache::FastMmap::IMPLEMENTATION is "
        . (defined $impl ? "'$impl'" : 'undef') . ", expected 'rust'"
        unless defined $impl && $impl eq 'rust';
    my $pm = $INC{'Cache/FastMmap.pm'};
    push @p, "Cache/FastMmap.pm loaded from " . ($pm // 'nowhere')
        . ", not from $ROOT/blib/lib or $ROOT/lib"
        unless _under($pm, "$ROOT/blib/lib") || _under($pm, "$ROOT/lib");
    return @p;
}

sub loaded_shared_object {
    my @so = grep { m{/auto/Cache/FastMmap/FastMmap\.[^/]+\z} }
        @DynaLoader::dl_shared_objects;
    return $so[-1];
}

sub so_problems {
    my $so = loaded_shared_object();
    return ("no FastMmap shared object recorded in \@DynaLoader::dl_shared_objects")
        unless defined $so;
    return ("FastMmap shared object $so is not under $ROOT/blib/arch")
        unless _under($so, "$ROOT/blib/arch");
    return ();
}

sub _guard {
    my @p = (build_problems(), so_problems());
    Test::More::BAIL_OUT("not testing our build: " . join('; ', @p)) if @p;
}
_guard();   # GUARD

# ---------------------------------------------------------------- watchdog
# Every test file gets a watchdog process: if the test is still running
# after $WATCHDOG seconds (a deadlock inside XS cannot be interrupted by a
# Perl signal handler), it is SIGKILLed, which prove reports as a failure.
our $WATCHDOG = ($ENV{FMTEST_WATCHDOG} || "") =~ /^(\d+)$/ ? $1 : 300;
my ($main_pid, $watchdog_pid) = ($$);
sub _start_watchdog {
    my $parent = $$;
    my $pid = fork;
    return unless defined $pid;
    if ($pid) { $watchdog_pid = $pid; return }
    # the watchdog must not keep prove's TAP pipe open
    open(STDIN, '<', '/dev/null');
    open(STDOUT, '>', '/dev/null');
    $SIG{$_} = 'DEFAULT' for qw(ALRM TERM INT);
    my $end = time + $WATCHDOG;
    while (time < $end) {
        POSIX::_exit(0) if getppid() != $parent;
        sleep 1;
    }
    if (getppid() == $parent) {
        print STDERR "# FMTest watchdog: $0 still running after ${WATCHDOG}s, killing it\n";
        kill 'KILL', $parent;
    }
    POSIX::_exit(0);
}
_start_watchdog();
END {
    if ($$ == $main_pid && $watchdog_pid) {
        local $?;
        kill 'KILL', $watchdog_pid;
        waitpid($watchdog_pid, 0);
    }
}

# ---------------------------------------------------------------- temp files

# One directory per test file. File::Temp removes it only in the process that
# created it, and forked children leave with POSIX::_exit anyway.
my $tmpdir;
sub tmpdir {
    return $tmpdir //= File::Temp::tempdir('fmtest-XXXXXX', TMPDIR => 1, CLEANUP => 1);
}

my $seq = 0;
sub share_file {
    my ($tag) = @_;
    $tag = defined $tag ? "-$tag" : '';
    $tag =~ s/[^\w.-]/_/g;
    return File::Spec->catfile(tmpdir(), sprintf("share-%d-%d%s", $$, ++$seq, $tag));
}

# Cache::FastMmap->new with a fresh share file in our temp dir.
sub new_cache {
    my %o = @_;
    $o{share_file} //= share_file();
    return Cache::FastMmap->new(%o);
}

# Some fixed, plausible epoch for the time override (page sanity checks in
# upstream treat times below 1e9 as corrupt).
use constant T0 => 1_700_000_000;

# ----------------------------------------------------------------- fork helpers

# fork_child($timeout, sub { ...; return $exit_code })
# The child arms alarm($timeout) with the DEFAULT action (kernel kill, works
# even while blocked inside XS), runs the code inside eval, and leaves with
# POSIX::_exit so no END block / temp-dir cleanup of the parent runs.
# A die in the code gives exit code 255 and the message on STDERR.
sub fork_child {
    my ($timeout, $code) = @_;
    my $pid = fork;
    die "fork failed: $!" unless defined $pid;
    return $pid if $pid;
    my $rc = 255;
    eval {
        $SIG{ALRM} = 'DEFAULT';
        alarm($timeout);
        $rc = $code->();
        $rc = 0 unless defined $rc && $rc =~ /^\d+$/;
        1;
    } or do {
        my $e = $@;
        print STDERR "child $$ died: $e";
        $rc = 255;
    };
    POSIX::_exit($rc);
}

# wait_children($deadline_seconds, @pids) -> { pid => $? }
# Reaps every pid; anything still running at the deadline is SIGKILLed and
# reaped (its status then shows signal 9).
sub wait_children {
    my ($timeout, @pids) = @_;
    my %left = map { $_ => 1 } @pids;
    my %st;
    my $end = Time::HiRes::time() + $timeout;
    while (%left && Time::HiRes::time() < $end) {
        for my $pid (keys %left) {
            my $r = waitpid($pid, POSIX::WNOHANG());
            if ($r == $pid || $r == -1) {
                $st{$pid} = $r == -1 ? -1 : $?;
                delete $left{$pid};
            }
        }
        Time::HiRes::sleep(0.05) if %left;
    }
    for my $pid (keys %left) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        $st{$pid} = $?;
        Test::More::diag("child $pid still running after ${timeout}s: killed");
    }
    return \%st;
}

sub describe_status {
    my ($st) = @_;
    return 'not reaped' if $st == -1;
    return 'signal ' . ($st & 127) if $st & 127;
    return 'exit ' . ($st >> 8);
}

# A pipe barrier: children call $b->wait (blocks until the parent calls
# $b->release, which closes the write end: every waiter sees EOF at once).
# Create it before forking.
sub barrier {
    pipe(my $r, my $w) or die "pipe: $!";
    return bless { r => $r, w => $w }, 'FMTest::Barrier';
}
sub FMTest::Barrier::wait {
    my ($b) = @_;
    close $b->{w} if $b->{w};
    delete $b->{w};
    my $buf;
    sysread($b->{r}, $buf, 1);
    return 1;
}
sub FMTest::Barrier::release {
    my ($b) = @_;
    close $b->{w} if $b->{w};
    delete $b->{w};
    close $b->{r} if $b->{r};
    delete $b->{r};
    return 1;
}

# run_in_child($timeout, sub {...}) -> exit status ($?) of a bounded child.
sub run_in_child {
    my ($timeout, $code) = @_;
    my $pid = fork_child($timeout, $code);
    return wait_children($timeout + 5, $pid)->{$pid};
}


# new(@args) in a bounded child in which every module file whose @INC name
# matches $block fails to load (an @INC hook that dies).  Returns the
# constructor's die message ('LIVED' if it did not die) and the child's
# exit status.
sub new_error_with_blocked {
    my ($block, @args) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork_child(30, sub {
        close $r;
        delete $INC{$_} for grep { $_ =~ $block } keys %INC;
        unshift @INC, sub {
            die "simulated load failure of $_[1]\n" if $_[1] =~ $block;
            return;
        };
        my $ok = eval { new_cache(@args); 1 };
        print $w $ok ? 'LIVED' : "DIED:$@";
        close $w;
        return 0;
    });
    close $w;
    my $msg = do { local $/; <$r> };
    close $r;
    my $st = wait_children(35, $pid)->{$pid};
    $msg //= '';
    $msg =~ s/\ADIED://;
    return ($msg, $st);
}


# Loads the optional modules a test needs: true when they all load; else
# skips the whole file, or fails under FASTMMAP_CI (CI installs them all).
sub need_modules {
    my @missing = grep { !eval "require $_; 1" } @_;
    return 1 unless @missing;
    if ($ENV{FASTMMAP_CI}) {
        Test::More::fail("FASTMMAP_CI is set but @missing cannot be loaded");
        return 0;
    }
    Test::More::plan(skip_all => "@missing not installed");
}

# have_module($module): true when the optional module loads.  For a part of
# a test (a SKIP block, one more case in a loop) that needs it:
#     skip "$module not installed", $n unless FMTest::have_module($module);
# Under FASTMMAP_CI a missing module also records a failure.
sub have_module {
    my ($module) = @_;
    return 1 if eval "require $module; 1";
    Test::More::fail("FASTMMAP_CI is set but $module cannot be loaded: $@")
        if $ENV{FASTMMAP_CI};
    return 0;
}

1;
