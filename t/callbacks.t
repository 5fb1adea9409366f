# read_cb, write_cb and delete_cb: when each callback runs, with which
# arguments, what happens to its result and to its exceptions (SPEC 1.5, 1.6).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

sub locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) ? 1 : 0 }

# ------------------------------------------------------------------ read_cb
{
    my @calls;
    my %store = (a => 'from-a', b => 'from-b');
    my $ctx = { name => 'ctx' };
    my $c = FMTest::new_cache(
        serializer => '',
        context    => $ctx,
        read_cb    => sub { push @calls, [@_]; return $store{ $_[1] } },
    );

    is($c->get('a'), 'from-a', 'miss: get returns what read_cb returned');
    is(scalar @calls, 1, '... read_cb called once');
    is($calls[0][0], $ctx, '... context passed first (the same reference)');
    is($calls[0][1], 'a', '... key passed second');
    is(scalar @{ $calls[0] }, 2, '... exactly two arguments');

    is($c->get('a'), 'from-a', 'second get: a hit');
    is(scalar @calls, 1, '... served from the cache, read_cb not called again');
    is($c->exists('a'), 1, 'the read_cb value was cached (exists 1)');

    my ($rec) = grep { $_->{key} eq 'a' } $c->get_keys(1);
    is($rec->{flags} & 1, 0, 'read_cb values are stored clean');
    is($rec->{expire_on}, 0, '... with the default expiry (never here)');

    @calls = ();
    is($c->get('missing'), undef, 'read_cb returning undef: get returns undef');
    is($c->get('missing'), undef, '... again');
    is(scalar @calls, 2, 'without cache_not_found an undef result is not cached (read_cb called each time)');
    is($c->exists('missing'), 0, '... exists() says 0');
}

# cache_not_found caches the undef, and exists() then says 1
{
    my $n = 0;
    my $c = FMTest::new_cache(
        cache_not_found => 1,
        read_cb => sub { $n++; return undef },
    );
    is($c->get('nothing'), undef, 'cache_not_found: get returns undef');
    is($c->get('nothing'), undef, '... second get');
    is($n, 1, '... read_cb called only once: the undef was cached');
    is($c->exists('nothing'), 1, 'exists() of a cached negative entry is 1');
    is(scalar(grep { $_ eq 'nothing' } $c->get_keys(0)), 1, 'the negative entry is listed by get_keys');
}

# Serializer round trip: the caller gets a copy of what read_cb returned.
{
    my $orig = { list => [1, 2, 3], name => 'x' };
    my $c = FMTest::new_cache(read_cb => sub { return $orig });
    my $got = $c->get('k');
    is_deeply($got, $orig, 'read_cb value round-trips (storable)');
    isnt($got, $orig, '... as a copy, not the same reference');
    isnt($got->{list}, $orig->{list}, '... deep copy');

    my @ser;
    my $c2 = FMTest::new_cache(
        serializer => [ sub { push @ser, 's'; return 'S:' . ${ $_[0] } },
                        sub { push @ser, 'd'; my $v = $_[0]; $v =~ s/^S://; return \"D:$v" } ],
        read_cb => sub { return "raw-$_[1]" },
    );
    is($c2->get('z'), 'D:raw-z', 'read_cb value passes through serialize then deserialize before being returned');
    is("@ser", 's d', '... serialize once, deserialize once');
}

# An expired entry is refilled through read_cb; an expired dirty value is
# dropped without being written back.
{
    my (@wb, $reads);
    my $c = FMTest::new_cache(
        serializer   => '',
        write_action => 'write_back',
        write_cb     => sub { push @wb, [ @_[1, 2] ] },
        read_cb      => sub { $reads++; return "fresh-$_[1]" },
    );
    $c->set('k', 'dirty-old', { expire_time => 10 });
    my ($rec) = grep { $_->{key} eq 'k' } $c->get_keys(1);
    is($rec->{flags} & 1, 1, 'write_back set stores a dirty entry');

    Cache::FastMmap::_set_time_override($T0 + 20);
    is($c->get('k'), 'fresh-k', 'expired entry: get calls read_cb and returns its value');
    is($reads, 1, '... read_cb called once');
    is(scalar @wb, 0, '... the expired dirty value was not written back');
    is($c->get('k'), 'fresh-k', 'the refill is cached');
    is($reads, 1, '... read_cb not called again');
    ($rec) = grep { $_->{key} eq 'k' } $c->get_keys(1);
    is($rec->{flags} & 1, 0, '... and stored clean');

    $c->empty;
    is(scalar @wb, 0, 'empty(): the dropped dirty value is never written back later');
    Cache::FastMmap::_set_time_override($T0);
}

# read_cb exceptions propagate and leave the page unlocked
for my $rec (0, 1) {
    my $c = FMTest::new_cache(
        allow_recursive => $rec,
        read_cb => sub { die "read failed for $_[1]\n" },
    );
    my $ok = eval { $c->get('boom'); 1 };
    ok(!$ok, "allow_recursive=$rec: a dying read_cb makes get die");
    is($@, "read failed for boom\n", '... with the read_cb error unchanged');
    is(locked($c), 0, '... page unlocked');
    ok($c->set('boom', 1), '... the cache still works');
}

# ------------------------------------------------------------ allow_recursive
{
    my $c;
    $c = FMTest::new_cache(
        allow_recursive => 1,
        read_cb => sub {
            my ($ctx, $key) = @_;
            return undef if $key ne 'outer';
            my $inner = $c->get('inner-key');
            $c->set('side', 'effect');
            return "outer+" . (defined $inner ? $inner : 'undef');
        },
    );
    $c->set('inner-key', 'I');
    my $v = eval { $c->get('outer') };
    is($@, '', 'allow_recursive: nested get/set inside read_cb do not die');
    is($v, 'outer+I', '... and the outer get returns the combined value');
    is($c->get('side'), 'effect', '... the nested set was stored');
    is(locked($c), 0, '... page unlocked afterwards');
    is($c->get('outer'), 'outer+I', '... outer value cached');
}
{
    my ($c, $inner_err);
    $c = FMTest::new_cache(
        read_cb => sub {
            my ($ctx, $key) = @_;
            return $c->get("nested-$key");
        },
    );
    my $ok = eval { $c->get('outer'); 1 };
    ok(!$ok, 'without allow_recursive: a nested call from read_cb croaks');
    like($@, qr/already locked/, "... 'already locked', propagated out of get");
    is(locked($c), 0, '... page unlocked afterwards');
    ok($c->set('outer', 'v') && $c->get('outer') eq 'v', '... and the cache works again');
}

# ----------------------------------------------------- write_cb, write_through
{
    my (@wb, $locked_in_cb, $nested);
    my $ctx = [ 'context' ];
    my $c;
    $c = FMTest::new_cache(
        serializer => '',
        num_pages  => 1,
        page_size  => 8192,
        context    => $ctx,
        write_cb   => sub {
            push @wb, [@_];
            $locked_in_cb = locked($c);
            $nested = $c->get('other');   # would croak if the page were locked
        },
    );
    $c->set('other', 'O');
    @wb = ();

    is($c->set('k1', 'v1'), 1, 'write_through set returns 1');
    is(scalar @wb, 1, '... write_cb called once');
    is(scalar @{ $wb[0] }, 4, '... with four arguments');
    is($wb[0][0], $ctx, '... context first');
    is($wb[0][1], 'k1', '... key');
    is($wb[0][2], 'v1', '... value');
    is($wb[0][3], -1, '... expire_on -1 when no expiry was given');
    is($locked_in_cb, 0, '... called after the page was unlocked');
    is($nested, 'O', '... so the callback can use the cache');

    @wb = ();
    $c->set('k1', 'v1');
    $c->set('k1', 'v2');
    is(scalar @wb, 2, 'write_cb called on every set, even an overwrite');

    @wb = ();
    $c->set('k2', 'v', 100);
    is($wb[0][3], $T0 + 100, 'relative expiry: expire_on passed as an absolute time');
    $c->set('k3', 'v', { expire_on => $T0 + 555 });
    is($wb[1][3], $T0 + 555, 'expire_on option passed through');
    $c->set('k4', 'v', { expire_on => 0 });
    is($wb[2][3], 0, 'expire_on 0 (never) passed as 0');

    my $ref = { deep => [1] };
    my $c2_wb;
    my $c2 = FMTest::new_cache(write_cb => sub { $c2_wb = $_[2] });
    $c2->set('r', $ref);
    is($c2_wb, $ref, 'write_cb gets the original value (same reference), not a copy');

    @wb = ();
    my $big = 'B' x 20000;
    is($c->set('huge', $big), 0, 'a set that cannot be stored returns 0');
    is(scalar @wb, 1, '... write_cb is still called in write_through mode');
    is($wb[0][2], $big, '... with the value');

    @wb = ();
    is($c->remove('guarded', { modseq => 10 }), 1, 'tombstone written');
    is($c->set('guarded', 'plain'), 0, 'a set refused by a tombstone returns 0');
    is($c->set('guarded', 'older', { modseq => 3 }), 0, 'a set refused by a newer modseq returns 0');
    is(scalar @wb, 0, '... write_cb is not called for refused conditional stores');
    is($c->set('guarded', 'newer', { modseq => 11 }), 1, 'an accepted modseq store');
    is(scalar @wb, 1, '... calls write_cb');

    my $d = FMTest::new_cache(write_cb => sub { die "write_cb failure\n" });
    local $@ = 'untouched';
    my $r = $d->set('x', 'y');
    is($r, 1, 'a dying write_cb is swallowed: set returns 1');
    is($@, 'untouched', '... and $@ is left alone');
    is($d->get('x'), 'y', '... value stored');
}

# write_cb is never called for read_cb refills or multi_set
{
    my @wb;
    my $c = FMTest::new_cache(
        write_cb => sub { push @wb, $_[1] },
        read_cb  => sub { "rcb" },
    );
    $c->get('via-read');
    $c->multi_set('pg', { a => 1, b => 2 });
    is(scalar @wb, 0, 'write_cb not called for read_cb refills or multi_set');
}

# ------------------------------------------------------------------ delete_cb
for my $mode ('write_through', 'write_back') {
    my @del;
    my $ctx = \"ctx-$mode";
    my $c = FMTest::new_cache(
        serializer   => '',
        num_pages    => 1,          # so multi_set entries are reachable by remove
        write_action => $mode,
        context      => $ctx,
        write_cb     => sub { },
        delete_cb    => sub { push @del, [@_] },
    );

    is($c->remove('absent'), 0, "$mode: remove of an absent key returns 0");
    is(scalar @del, 1, '... delete_cb is called anyway');
    is($del[0][0], $ctx, '... context first');
    is($del[0][1], 'absent', '... then the key');
    is(scalar @{ $del[0] }, 2, '... two arguments');

    @del = ();
    $c->multi_set('pg', { clean => 1 });   # multi_set values are always clean
    is($c->remove('pg-clean'), 1, "$mode: remove of a clean entry returns 1");
    is(scalar @del, 1, '... delete_cb called for a clean delete');

    @del = ();
    $c->set('s', 'v');
    is($c->remove('s'), 1, "$mode: remove after set returns 1");
    if ($mode eq 'write_back') {
        is(scalar @del, 0, '... delete_cb NOT called for a dirty entry');
    } else {
        is(scalar @del, 1, '... delete_cb called (write_through entries are clean)');
    }

    @del = ();
    $c->set('t', 'v');
    is($c->remove('t', { modseq => 5 }), 1, "$mode: tombstone remove over a live entry");
    is($c->remove('t', { modseq => 2 }), 1, '... a no-op tombstone remove');
    is($c->remove('never-there', { modseq => 1 }), 1, '... tombstone remove of an absent key');
    is(scalar @del, 3, '... delete_cb called for every tombstone remove');
    is_deeply([ map { $_->[1] } @del ], [qw(t t never-there)], '... with the right keys');

    @del = ();
    is($c->remove('t'), 1, "$mode: plain remove of a tombstone returns 1");
    is(scalar @del, 1, '... delete_cb called (a tombstone is clean)');
}
{
    my $c = FMTest::new_cache(num_pages => 1, delete_cb => sub { die "delete_cb failure\n" });
    $c->multi_set('p', { q => 1 });
    local $@ = 'untouched';
    my $r = $c->remove('p-q');
    is($r, 1, 'a dying delete_cb is swallowed: remove returns 1');
    is($@, 'untouched', '... and $@ is left alone');
    is($c->exists('p-q'), 0, '... the entry is gone');
}
{
    my @del;
    my $c = FMTest::new_cache(delete_cb => sub { push @del, $_[1] }, write_cb => sub { });
    $c->set('gr', 'v');
    my @r = $c->get_and_remove('gr');
    is_deeply(\@r, ['v', 1], 'get_and_remove returns (value, 1)');
    is_deeply(\@del, ['gr'], '... and calls delete_cb for the clean entry');
    @del = ();
    $c->set('ex', 'v');
    is($c->expire('ex'), 1, 'expire returns 1');
    is(scalar @del, 0, '... and never calls delete_cb');
}

done_testing;
