#!perl
# Lock model (SPEC 1.5 read_cb, 1.7, 5.9): one page lock per object, nested
# access croaks "already locked", allow_recursive, and the page is released
# after every kind of exception -- checked both in-process and by a bounded
# child process that must be able to take the same page afterwards.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

# A child process sets $key to 'child' (taking the page lock); it gets 20 s
# (kernel-enforced alarm).
sub child_can_lock {
    my ($c, $key, $desc) = @_;
    my $st = FMTest::run_in_child(20, sub {
        return $c->set($key, 'child') == 1 ? 0 : 1;
    });
    is(FMTest::describe_status($st), 'exit 0', "$desc: another process can lock the page");
}
sub not_locked {
    my ($c, $desc) = @_;
    ok(!Cache::FastMmap::fc_is_locked($c->{Cache}), "$desc: not locked afterwards");
}

# ------------------------------------------------ read_cb runs with the page locked
{
    my $c;
    my $calls = 0;
    $c = FMTest::new_cache(num_pages => 7, page_size => 8192, serializer => '',
        read_cb => sub { $calls++; return $c->get("$_[1]-inner") });
    $c->set('miss-inner', 'inner value');
    my $ok = eval { $c->get('miss'); 1 };
    ok(!$ok, 'read_cb calling the same cache: the outer get dies');
    like($@, qr/already locked/, "... with 'already locked'");
    like($@, qr/page \d+ is already locked, can't lock multiple pages/, '... the full upstream message');
    is($calls, 1, 'read_cb was called once');
    not_locked($c, 'nested read_cb');
    is($c->get('miss-inner'), 'inner value', 'cache usable afterwards');
    $c->set('miss', 'now set');
    is($c->get('miss'), 'now set', 'and the same key too');
    child_can_lock($c, 'miss', 'nested read_cb');
    $c->cleanup;
}

# ------------------------------------------------ allow_recursive
{
    my $c;
    $c = FMTest::new_cache(num_pages => 7, page_size => 8192, serializer => '', allow_recursive => 1,
        read_cb => sub { my $v = $c->get("$_[1]-src"); defined $v ? "via $v" : undef });
    $c->set('k-src', 'source');
    is($c->get('k'), 'via source', 'allow_recursive: read_cb may use the cache');
    $c->remove('k-src');
    is($c->get('k'), 'via source', 'the read_cb value was cached');
    not_locked($c, 'allow_recursive');
    $c->cleanup;
}

# ------------------------------------------------ dying read_cb, both modes
for my $rec (0, 1) {
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, allow_recursive => $rec,
                              read_cb => sub { die "read_cb failed\n" });
    my $ok = eval { $c->get('x'); 1 };
    ok(!$ok, "allow_recursive=$rec: read_cb die propagates");
    is($@, "read_cb failed\n", '... unchanged');
    not_locked($c, "read_cb die (allow_recursive=$rec)");
    child_can_lock($c, 'x', "read_cb die (allow_recursive=$rec)");
    is($c->get('x'), 'child', 'the child\'s value is visible');
}

# ------------------------------------------------ get_and_set callback problems
{
    my $c;
    $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    $c->set('k', 10);

    my $ok = eval { $c->get_and_set('k', sub { die "callback failed\n" }); 1 };
    ok(!$ok, 'dying get_and_set callback: dies');
    is($@, "callback failed\n", '... with the callback error');
    not_locked($c, 'get_and_set die');
    is($c->get('k'), 10, 'value unchanged');
    child_can_lock($c, 'k', 'get_and_set die');
    is($c->get('k'), 'child', 'child stored its value');
    $c->set('k', 11);

    $ok = eval { $c->get_and_set('k', sub { $c->get('other'); 5 }); 1 };
    ok(!$ok, 'get_and_set callback using the cache: dies');
    like($@, qr/already locked/, "... 'already locked'");
    not_locked($c, 'nested get_and_set');
    $ok = eval { $c->get_and_set('k', sub { $c->set('k', 1); 5 }); 1 };
    like($ok ? '' : $@, qr/already locked/, 'set of the same key inside the callback: already locked');
    not_locked($c, 'nested set');
    is($c->get('k'), 11, 'value still unchanged');

    eval { $c->get_and_set('k', sub { (12, 'bad options') }) };
    not_locked($c, 'bad options');
    child_can_lock($c, 'k', 'bad options');

    is($c->get('k'), 'child', 'child stored its value');
    $c->set('k', 12);
    is($c->get_and_set('k', sub { $_[1] + 100 }), 112, 'get_and_set works again afterwards');
    $c->cleanup;
}

# ------------------------------------------------ serializer / deserializer dies
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192,
        serializer => [ sub { die "ser failed\n" if ${ $_[0] } eq 'BAD'; ${ $_[0] } },
                        sub { die "deser failed\n" if $_[0] eq 'POISON'; \"$_[0]" } ]);
    my $ok = eval { $c->set('s', 'BAD'); 1 };
    ok(!$ok, 'dying serializer: set dies');
    like($@, qr/^ser failed/, '... with the serializer error');
    not_locked($c, 'serializer die in set');
    child_can_lock($c, 's', 'serializer die in set');

    $ok = eval { $c->get_and_set('s', sub { 'BAD' }); 1 };
    like($ok ? '' : $@, qr/^ser failed/, 'dying serializer inside get_and_set');
    not_locked($c, 'serializer die in get_and_set');
    child_can_lock($c, 's', 'serializer die in get_and_set');

    $ok = eval { $c->multi_set('p', { a => 'BAD' }); 1 };
    like($ok ? '' : $@, qr/^ser failed/, 'dying serializer inside multi_set');
    not_locked($c, 'serializer die in multi_set');

    $c->multi_set('p', { b => 'POISON' });
    $ok = eval { $c->multi_get('p', ['b']); 1 };
    like($ok ? '' : $@, qr/^deser failed/, 'dying deserializer inside multi_get');
    not_locked($c, 'deserializer die in multi_get');

    $c->set('d', 'POISON');
    $ok = eval { $c->get_and_set('d', sub { 'fine' }); 1 };
    like($ok ? '' : $@, qr/^deser failed/, 'dying deserializer inside get_and_set');
    not_locked($c, 'deserializer die in get_and_set');
    $ok = eval { $c->get_and_remove('d'); 1 };
    like($ok ? '' : $@, qr/^deser failed/, 'dying deserializer inside get_and_remove');
    not_locked($c, 'deserializer die in get_and_remove');
    child_can_lock($c, 'd', 'deserializer die');
}

# ------------------------------------------------ one page per object
{
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192);
    my $h = $c->{Cache};
    my ($page) = Cache::FastMmap::fc_hash($h, 'x');
    Cache::FastMmap::fc_lock($h, $page);
    ok(Cache::FastMmap::fc_is_locked($h), 'fc_lock: locked');
    my $other = ($page + 1) % 3;
    ok(!eval { Cache::FastMmap::fc_lock($h, $other); 1 }, 'fc_lock of a second page croaks');
    like($@, qr/page \d+ is already locked, can't lock multiple pages/, '... the upstream message');
    ok(!eval { Cache::FastMmap::fc_lock($h, $page); 1 }, 'fc_lock of the same page again croaks');
    ok(!eval { $c->get('x'); 1 }, 'a method while fc_lock is held croaks');
    like($@, qr/already locked/, "... 'already locked'");
    Cache::FastMmap::fc_unlock($h);
    ok(!Cache::FastMmap::fc_is_locked($h), 'fc_unlock: unlocked');
    Cache::FastMmap::fc_unlock($h);
    pass('a second fc_unlock is harmless');
    ok(!eval { Cache::FastMmap::fc_lock($h, 3); 1 }, 'fc_lock of page == num_pages croaks');
    ok(!Cache::FastMmap::fc_is_locked($h), '... and leaves nothing locked');
    is($c->set('x', 1), 1, 'cache usable');
}

done_testing;
