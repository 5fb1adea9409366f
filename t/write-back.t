# write_action => 'write_back': which entries become dirty, when dirty
# entries are handed to write_cb and when they are silently dropped
# (SPEC 1.5, 1.6, 1.8, 2.8).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Scalar::Util ();

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

sub locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) ? 1 : 0 }
sub flags_of {
    my ($c, $key) = @_;
    my ($rec) = grep { $_->{key} eq $key } $c->get_keys(1);
    return $rec ? $rec->{flags} : undef;
}

# --------------------------------------------------------------- dirty flags
{
    my $c = FMTest::new_cache(
        num_pages    => 1,
        write_action => 'write_back',
        write_cb     => sub { },
        read_cb      => sub { "rcb-$_[1]" },
    );
    $c->set('s', 1);
    $c->get_and_set('gs', sub { 'new' });
    $c->get('rcb');
    $c->multi_set('m', { x => 1 });
    is(flags_of($c, 's') & 1, 1, 'write_back: set stores dirty');
    is(flags_of($c, 'gs') & 1, 1, 'write_back: get_and_set stores dirty');
    is(flags_of($c, 'rcb') & 1, 0, 'write_back: read_cb refill stored clean');
    is(flags_of($c, 'm-x') & 1, 0, 'write_back: multi_set stores clean');

    my $t = FMTest::new_cache(write_cb => sub { });
    $t->set('s', 1);
    $t->get_and_set('gs', sub { 'new' });
    is(flags_of($t, 's') & 1, 0, 'write_through: set stores clean');
    is(flags_of($t, 'gs') & 1, 0, 'write_through: get_and_set stores clean');

    my $o = FMTest::new_cache(write_action => 'something-else', write_cb => sub { });
    $o->set('s', 1);
    is(flags_of($o, 's') & 1, 0, 'an unknown write_action means write_through');
}

# ------------------------------------------------- write-back during expunge
# One small page, so sets soon have to evict.  Values are hashes (Storable)
# so that "deserialized" can be checked.
{
    my (@wb, @locked);
    my $ctx = { ctx => 1 };
    my $c;
    $c = FMTest::new_cache(
        num_pages    => 1,
        page_size    => 8192,
        context      => $ctx,
        write_action => 'write_back',
        write_cb     => sub { push @wb, [@_]; push @locked, locked($c) },
    );
    my $i = 0;
    until (@wb || $i > 500) {
        $i++;
        $c->set("k$i", { n => $i, pad => 'p' x 60 });
    }
    ok(@wb > 0, "evictions wrote back dirty entries (after $i sets)");
    is(scalar(grep { $_ != 1 } @locked), 0, 'every expunge write-back ran while the page was locked');
    is(scalar(grep { @$_ != 4 } @wb), 0, 'write_cb got four arguments each time');
    is(scalar(grep { $_->[0] != $ctx } @wb), 0, '... the context first');
    my ($first) = @wb;
    my ($num) = $first->[1] =~ /^k(\d+)$/;
    ok(defined $num, 'an evicted key was written back') or diag "evicted $first->[1]";
    is_deeply($first->[2], { n => $num, pad => 'p' x 60 }, '... value passed deserialized');
    is($first->[3], 0, '... expire_on passed (0: never)');
    is($c->exists($first->[1]), 0, 'the written-back entry left the cache');

    # A recently set entry that has expired goes out in the next expunge
    # and is written back even though it expired.
    $c->clear;
    @wb = (); @locked = ();
    Cache::FastMmap::_set_time_override($T0 + 1);
    $c->set("k$_", { n => $_ }) for 1 .. 10;
    $c->set('will-expire', { n => 'E' }, { expire_on => $T0 + 5 });
    Cache::FastMmap::_set_time_override($T0 + 10);
    is($c->get('will-expire'), undef, 'expired entry: get misses');
    is($c->exists('will-expire'), 0, '... exists misses');
    is(scalar @wb, 0, '... neither wrote it back');
    $i = 0;
    until ((grep { $_->[1] eq 'will-expire' } @wb) || $i > 500) {
        $i++;
        $c->set("j$i", { n => $i, pad => 'q' x 60 });
    }
    my ($exp) = grep { $_->[1] eq 'will-expire' } @wb;
    ok($exp, 'an expired dirty entry is written back by an expunge');
    is_deeply($exp && $exp->[2], { n => 'E' }, '... with its deserialized value');
    is($exp && $exp->[3], $T0 + 5, '... and its (past) expire_on');
    is(scalar(grep { $_ != 1 } @locked), 0, '... while the page is locked');
    Cache::FastMmap::_set_time_override($T0);
}

# A write_cb that re-enters the cache during an expunge write-back croaks
# "already locked"; the croak is swallowed (the write-back is lost).
{
    my ($errs, $calls) = (0, 0);
    my $c;
    $c = FMTest::new_cache(
        num_pages => 1, page_size => 4096, serializer => '',
        write_action => 'write_back',
        write_cb => sub { $calls++; eval { $c->get('x'); 1 } or $@ =~ /already locked/ && $errs++; die "again\n" },
    );
    my $ok = eval { $c->set("key$_", 'x' x 100) for 1 .. 60; 1 };
    ok($ok, 'write_cb re-entering the cache during an expunge does not break set');
    ok($calls > 0, '... write_cb ran');
    is($errs, $calls, '... and every nested call croaked "already locked"');
    is(locked($c), 0, '... page unlocked after the set');
}

# --------------------------------------------- 100 sets into one 4k page
{
    my @wb;
    my $c = FMTest::new_cache(
        num_pages => 1, page_size => 4096, serializer => '',
        write_action => 'write_back',
        write_cb => sub { push @wb, scalar @_ },
    );
    $c->set("key$_", 'x' x 100) for 1 .. 100;
    # SPEC 2.8's trace: 83, as in the C implementation (our default 44
    # 8-byte slots take the bytes of its 89 4-byte ones).
    is(scalar @wb, 83, '100 sets of 100-byte values into one 4k page: 83 write-backs');
    is(scalar(grep { $_ != 4 } @wb), 0, '... each call with 4 arguments');
}

# ----------------------------------------------------------- empty / empty(1)
{
    my %wb;
    my $c = FMTest::new_cache(
        write_action => 'write_back',
        write_cb => sub { $wb{ $_[1] } = [ @_[2, 3] ] },
        read_cb  => sub { "clean-$_[1]" },
    );
    $c->set('d1', [1]);
    $c->set('d2', 'two', { expire_on => $T0 + 5 });
    $c->set('d3', 'three');
    $c->get('c1');                               # clean
    Cache::FastMmap::_set_time_override($T0 + 10);   # d2 expired now

    is($c->get('d2'), 'clean-d2', 'an expired entry read via get goes to read_cb');
    is(scalar keys %wb, 0, '... its dirty value is dropped, not written back');
    # ... which dropped d2's dirty value; use another expired dirty entry.
    $c->set('d4', 'four', { expire_on => $T0 + 12 });
    Cache::FastMmap::_set_time_override($T0 + 20);
    # Reads that miss on an expired entry leave it in place.
    $c->get_keys(2);
    is($c->exists('d4'), 0, 'exists misses on the expired entry');

    $c->empty(1);
    is_deeply([ sort keys %wb ], ['d4'], 'empty(1) writes back only expired dirty entries');
    is_deeply($wb{d4}, [ 'four', $T0 + 12 ], '... with value and expire_on');
    is($c->exists('d4'), 0, '... and removes them');
    is($c->exists('d1'), 1, '... unexpired entries stay');

    %wb = ();
    $c->empty;
    is_deeply([ sort keys %wb ], [qw(d1 d3)], 'empty() writes back every dirty entry, not clean ones');
    is_deeply($wb{d1}, [ [1], 0 ], '... deserialized, with expire_on');
    is(scalar(my @k = $c->get_keys(0)), 0, '... and leaves the cache empty');

    %wb = ();
    $c->empty;
    is(scalar keys %wb, 0, 'a second empty() writes nothing back');
    Cache::FastMmap::_set_time_override($T0);
}

# ------------------------------------------------ failed store fallback
{
    my @wb;
    my $c = FMTest::new_cache(
        num_pages => 1, page_size => 4096, serializer => '',
        write_action => 'write_back',
        write_cb => sub { push @wb, [@_[1 .. 3]] },
    );
    my $big = 'y' x 5000;
    is($c->set('big', $big), 0, 'write_back: a value that cannot fit is not stored');
    is_deeply(\@wb, [ [ 'big', $big, -1 ] ], '... and is handed to write_cb at once (expire_on -1)');
    @wb = ();
    $c->set('big', $big, { expire_on => $T0 + 99 });
    is_deeply(\@wb, [ [ 'big', $big, $T0 + 99 ] ], '... expire_on passed when given');
    @wb = ();
    is($c->set('small', 'ok'), 1, 'a value that fits is stored');
    is(scalar @wb, 0, '... and not written back yet');
}

# ----------------------------------------------------- never written back
{
    my @wb;
    my $c = FMTest::new_cache(
        write_action => 'write_back',
        write_cb => sub { push @wb, [ @_[1, 2] ] },
        delete_cb => sub { push @wb, [ 'DEL', $_[1] ] },
    );
    $c->set('a', 1); $c->set('b', 2);
    $c->clear;
    is(scalar @wb, 0, 'clear: dirty entries are not written back');
    is(scalar(my @k = $c->get_keys(0)), 0, '... but are gone');

    $c->set('e', 1, { expire_on => $T0 + 1 });
    Cache::FastMmap::_set_time_override($T0 + 2);
    $c->purge;
    is(scalar @wb, 0, 'purge: expired dirty entries are dropped without write-back');
    is($c->remove('e'), 0, '... the entry is really gone');
    @wb = ();
    Cache::FastMmap::_set_time_override($T0);

    $c->set('r', 1);
    is($c->remove('r'), 1, 'plain remove of a dirty entry');
    is(scalar @wb, 0, '... neither write_cb nor delete_cb');

    $c->set('o', 'first');
    $c->set('o', 'second');
    is(scalar @wb, 0, 'overwriting a dirty entry does not write the old value back');
    $c->empty;
    is_deeply(\@wb, [ [ 'o', 'second' ] ], '... only the latest value is written back later');

    @wb = ();
    $c->set('x', 'expired', { expire_on => $T0 + 1 });
    Cache::FastMmap::_set_time_override($T0 + 2);
    $c->set('x', 'new');
    $c->empty;
    is_deeply(\@wb, [ [ 'x', 'new' ] ], 'a set over an expired dirty entry drops the old value');
    Cache::FastMmap::_set_time_override($T0);

    @wb = ();
    $c->remove('t', { modseq => 1 });
    $c->empty;
    is_deeply(\@wb, [ [ 'DEL', 't' ] ], 'tombstones are never passed to write_cb');
}

# ------------------------------------------------------------- expire($key)
{
    my (@wb, $locked_in_cb);
    my $c;
    $c = FMTest::new_cache(
        write_action => 'write_back',
        write_cb => sub { push @wb, [@_[1 .. 3]]; $locked_in_cb = locked($c) },
        read_cb  => sub { 'clean' },
    );
    $c->set('k', { deep => [ 1, 2 ] }, { expire_on => $T0 + 50 });
    is($c->expire('k'), 1, 'expire of a live dirty entry returns 1');
    is_deeply(\@wb, [ [ 'k', { deep => [ 1, 2 ] }, $T0 + 50 ] ],
        '... writes it back with the deserialized value and expire_on');
    is($locked_in_cb, 0, '... after unlocking the page');
    is($c->exists('k'), 0, '... and deletes it');

    @wb = ();
    $c->get('c');
    is($c->expire('c'), 1, 'expire of a clean entry returns 1');
    is(scalar @wb, 0, '... no write-back');
    is($c->expire('nope'), 0, 'expire of an absent key returns 0');

    $c->set('old', 'v', { expire_on => $T0 + 1 });
    Cache::FastMmap::_set_time_override($T0 + 5);
    is($c->expire('old'), 0, 'expire of an already expired entry returns 0');
    is(scalar @wb, 0, '... no write-back yet');
    $c->empty(1);
    is_deeply(\@wb, [ [ 'old', 'v', $T0 + 1 ] ], '... it stayed and the next expunge writes it back');
    Cache::FastMmap::_set_time_override($T0);

    SKIP: {
        skip 'Compress::Zlib not installed', 1 unless FMTest::have_module('Compress::Zlib');
        my @raw;
        my $r = FMTest::new_cache(
            write_action => 'write_back', serializer => '', compressor => 'zlib',
            write_cb => sub { push @raw, $_[2] },
        );
        $r->set('z', 'plain text');
        $r->expire('z');
        is_deeply(\@raw, ['plain text'], 'expire decompresses before write_cb');
    }
}

# ------------------------------------------------------------- empty_on_exit
{
    my @wb;
    my $c = FMTest::new_cache(
        empty_on_exit => 1,
        write_action => 'write_back',
        write_cb => sub { push @wb, $_[1] },
    );
    my $name = "$c";
    ok(exists $Cache::FastMmap::LiveCaches{$name}, '%LiveCaches keyed by the stringified object');
    ok(Scalar::Util::isweak($Cache::FastMmap::LiveCaches{$name}), '... holding a weak reference');
    is($Cache::FastMmap::LiveCaches{$name}, $c, '... to the object');
    my $plain = FMTest::new_cache();
    ok(!exists $Cache::FastMmap::LiveCaches{"$plain"}, 'caches without empty_on_exit are not registered');
    my $second = FMTest::new_cache(empty_on_exit => 1);
    is(scalar(grep { defined } values %Cache::FastMmap::LiveCaches), 2, 'two live empty_on_exit caches');
    undef $second;
    is(scalar(grep { defined } values %Cache::FastMmap::LiveCaches), 1, 'DESTROY drops the entry');

    $c->set("d$_", $_) for 1 .. 3;
    $c->get_and_set('g', sub { 'x' });

    # A forked child that exits normally (running END and global
    # destruction, where the inherited object is still registered) never
    # empties the parent's cache.
    my $log = FMTest::share_file('child-wb-log');
    $c->{write_cb} = sub {
        push @wb, $_[1];
        open my $fh, '>>', $log or return;
        print $fh "$$ $_[1]\n";
        close $fh;
    };
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        $SIG{ALRM} = 'DEFAULT';
        alarm 20;
        exit 0;
    }
    my $st = FMTest::wait_children(25, $pid)->{$pid};
    is(FMTest::describe_status($st), 'exit 0', 'child exited normally');
    my @child_lines;
    if (open my $fh, '<', $log) { @child_lines = grep { /^$pid / } <$fh> }
    is(scalar @child_lines, 0, "the child's exit wrote nothing back");
    is(scalar(grep { $c->exists("d$_") } 1 .. 3), 3, "the child's exit did not empty the cache");

    undef $c;
    is_deeply([ sort @wb ], [qw(d1 d2 d3 g)], 'DESTROY with empty_on_exit writes back every dirty entry');
    is(scalar(grep { defined } values %Cache::FastMmap::LiveCaches), 0, '... and unregisters');
}

# empty_on_exit at END: a separate perl keeps its cache in a global (alive
# until global destruction), so the write-back must come from END.
{
    my $out  = FMTest::share_file('end-out');
    my $file = FMTest::share_file('end-cache');
    my $script = <<'PERL';
use strict; use warnings;
use Cache::FastMmap;
my ($file, $out) = @ARGV;
die "wrong build\n" unless ($Cache::FastMmap::IMPLEMENTATION || '') eq 'rust';
our $Cache = Cache::FastMmap->new(
    share_file => $file, unlink_on_exit => 0, serializer => '',
    empty_on_exit => 1, write_action => 'write_back',
    write_cb => sub {
        open my $fh, '>>', $out or die; print $fh "$_[1]=$_[2]\n"; close $fh;
    },
);
$Cache->set("e$_", "v$_") for 1 .. 4;
open my $fh, '>>', $out or die; print $fh "set-done\n"; close $fh;
# deliberately no undef: the object lives on into END
PERL
    my @inc = map { "-I$FMTest::ROOT/$_" } qw(blib/lib blib/arch);
    my $pid = FMTest::fork_child(30, sub {
        exec($^X, @inc, '-e', $script, $file, $out) or return 2;
    });
    my $st = FMTest::wait_children(35, $pid)->{$pid};
    is(FMTest::describe_status($st), 'exit 0', 'separate perl with an empty_on_exit cache exits cleanly');
    open my $fh, '<', $out or die "no output: $!";
    my @lines = <$fh>;
    chomp @lines;
    is($lines[0], 'set-done', 'all sets done before anything was written back');
    is_deeply([ sort @lines[1 .. $#lines] ], [ map { "e$_=v$_" } 1 .. 4 ],
        'at exit, END empties the cache and writes back every dirty entry once');

    my $check = FMTest::new_cache(share_file => $file, serializer => '');
    is(scalar(my @k = $check->get_keys(0)), 0, '... the file was emptied');
}

done_testing;
