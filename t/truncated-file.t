#!perl
# A share file truncated while it is mapped costs cached data, never the
# process: the access that faults reads zeros instead of dying of SIGBUS,
# the handle warns once and opens the file again at its next lock (which
# rebuilds it), and every process carries on.  A SIGBUS that is not about our
# mappings still does what it did before (the default action, or the
# program's own handler).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my %GEOM = (num_pages => 3, page_size => 65536, serializer => '');
my $FILE_SIZE = FMTest::file_size($GEOM{num_pages}, $GEOM{page_size});

for my $size (0, FMTest::FILE_HEADER_BYTES, int($FILE_SIZE / 2)) {
    my $st = FMTest::run_in_child(60, sub {
        my $c = FMTest::new_cache(%GEOM);
        my $f = $c->{share_file};
        $c->set("k$_", "v$_") for 1 .. 300;
        my @warn;
        local $SIG{__WARN__} = sub { push @warn, $_[0] };
        truncate($f, $size) or die "truncate: $!";
        # Every key: some pages are past the new end (they fault), some not.
        my @got = map { $c->get("k$_") } 1 .. 300;
        my @wrong = grep { defined $got[$_ - 1] && $got[$_ - 1] ne "v$_" } 1 .. 300;
        return 3 if @wrong;
        $c->set("k$_", "w$_") or return 4 for 1 .. 50;
        return 5 if grep { ($c->get("k$_") // '') ne "w$_" } 1 .. 50;
        # Cut deep enough that the reads above touched a lost page: rebuilt,
        # with a warning.
        return 6 unless -s $f == $FILE_SIZE;
        return 7 unless grep { /shrank while mapped/ } @warn;
        # another process sees what was written after the rebuild
        my $o = Cache::FastMmap->new(share_file => $f, %GEOM, unlink_on_exit => 0);
        return 8 unless ($o->get('k1') // '') eq 'w1';
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0', "truncated to $size bytes under a live mapping: the process carries on")
        or diag('3 wrong value, 4/5 set or get failed, 6 not rebuilt, 7 no warning, 8 not shared');
}

# Another process reading in a loop while the file is truncated under it.
{
    my $c = FMTest::new_cache(%GEOM);
    my $f = $c->{share_file};
    $c->set("k$_", "v$_") for 1 .. 300;
    pipe(my $r, my $w) or die "pipe: $!";
    my $go = FMTest::barrier();
    my $reader = FMTest::fork_child(60, sub {
        close $r;
        my $o = Cache::FastMmap->new(share_file => $f, %GEOM, unlink_on_exit => 0);
        local $SIG{__WARN__} = sub { };
        $o->get('k1');
        syswrite($w, "ready\n");
        $go->wait;
        for my $round (1 .. 2000) {
            for (1 .. 300) {
                my $v = $o->get("k$_");
                return 3 if defined $v && $v ne "v$_" && $v ne "n$_";
            }
        }
        return 0;
    });
    close $w;
    my $line = <$r>;
    is($line, "ready\n", 'the reader has the file mapped');
    $go->release;
    select(undef, undef, undef, 0.05);
    truncate($f, 0) or die "truncate: $!";
    local $SIG{__WARN__} = sub { };
    $c->set("k$_", "n$_") for 1 .. 300;
    my $st = FMTest::wait_children(60, $reader);
    is(FMTest::describe_status($st->{$reader}), 'exit 0',
       'a process reading while the file is truncated under it survives');
    is($c->get('k7'), 'n7', 'the writer carries on in the rebuilt file');
}

# A sparse cache file on a full filesystem: writing into a page whose
# blocks were never allocated faults (the filesystem has no room), and the
# process survives.  A small tmpfs is mounted for it; the holes are punched
# with fallocate(1), since new files are always fully allocated.
SKIP: {
    # machine: mounting a tmpfs needs root and a kernel that allows it here
    skip 'mounting needs root', 2 unless $> == 0 && $^O eq 'linux';
    my ($fallocate) = grep { -x } map { "$_/fallocate" } split /:/, $ENV{PATH} // '';
    skip 'no fallocate(1) to punch holes', 2 unless $fallocate;
    my $mnt = FMTest::tmpdir() . '/small';
    mkdir $mnt or die "mkdir: $!";
    my $out = `mount -t tmpfs -o size=1m fmtest-sparse '$mnt' 2>&1`;
    skip "cannot mount a tmpfs here: $out", 2 if $?;
    my $st = FMTest::run_in_child(60, sub {
        my $f = "$mnt/cache";
        my $c = Cache::FastMmap->new(share_file => $f, %GEOM, unlink_on_exit => 0);
        $c->set('before', 'x');
        # free the pages' blocks (each page's own bytes: the lock entry
        # before each page stays), then fill the filesystem up
        for my $n (0 .. $GEOM{num_pages} - 1) {
            system("$fallocate --punch-hole --offset " . FMTest::page_off($GEOM{page_size}, $n)
                   . " --length $GEOM{page_size} '$f'") == 0 or return 9;
        }
        if (open my $fill, '>', "$mnt/fill") {
            my $block = "\0" x 65536;
            1 while syswrite($fill, $block);
            close $fill;
        }
        local $SIG{__WARN__} = sub { };
        $c->set("k$_", 'y' x 1000) for 1 .. 100;   # faults: no room for the pages
        $c->get('k1');
        return 0;
    });
    is(FMTest::describe_status($st), 'exit 0', 'writing into a sparse file on a full filesystem: the process survives')
        or diag('9: could not punch holes');
    system('umount', $mnt);
    ok(!-e "$mnt/cache", 'the small tmpfs is unmounted again');
}

# SIGBUS that is not ours: the default action still kills, and a program's
# own handler installed before the cache still runs.
{
    my $st = FMTest::run_in_child(30, sub {
        my $c = FMTest::new_cache(%GEOM);
        $c->set('a', 1);
        kill 'BUS', $$;
        sleep 5;
        return 0;
    });
    is(FMTest::describe_status($st), 'signal 7', 'a SIGBUS sent to the process still kills it');

    $st = FMTest::run_in_child(30, sub {
        my $seen = 0;
        local $SIG{BUS} = sub { $seen++ };
        my $c = FMTest::new_cache(%GEOM);
        $c->set('a', 1);
        kill 'BUS', $$;
        for (1 .. 50) { last if $seen; select(undef, undef, undef, 0.05) }
        return $seen ? 0 : 3;
    });
    is(FMTest::describe_status($st), 'exit 0', "the program's own SIGBUS handler still runs");
}

done_testing;
