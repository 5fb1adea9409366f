# Exceptions inside locked paths release the page lock and are re-thrown
# (SPEC 1.7); successful calls never change the caller's $@ (SPEC 6); a
# method called after cleanup croaks.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

sub locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) ? 1 : 0 }

# After an error: the object holds no lock, the same page works again in this
# process, and another process can lock it too (a lock still held would make
# the child block until its alarm kills it).
sub page_free {
    my ($c, $key, $what) = @_;
    is(locked($c), 0, "$what: fc_is_locked is false afterwards");
    my $ok = eval { $c->set($key, 'after') && $c->get($key) eq 'after' };
    ok($ok, "$what: a following set/get on the same page works") or diag $@;
    my $st = FMTest::run_in_child(10, sub {
        $c->set($key, 'child') ? 0 : 1;
    });
    is(FMTest::describe_status($st), 'exit 0', "$what: another process can lock the page");
    $c->set($key, 'reset');
}

# Serializer that dies on demand; values are stored as "S:<value>".
my $die_ser = 0;
my $die_deser = 0;
my @ser = (
    sub { die "serializer exploded\n" if $die_ser; 'S:' . (defined ${ $_[0] } ? ${ $_[0] } : '') },
    sub { die "deserializer exploded\n" if $die_deser; my $v = $_[0]; $v =~ s/^S://; \$v },
);

# one page: every key lives on the same page
my $c = FMTest::new_cache(num_pages => 1, serializer => \@ser);
$c->set('k', 'v');

# --- get_and_set callback dies
{
    my $ok = eval { $c->get_and_set('k', sub { die "callback died\n" }); 1 };
    ok(!$ok, 'get_and_set: a dying callback makes it die');
    is($@, "callback died\n", '... with the callback error');
    page_free($c, 'k', 'get_and_set callback');
}

# --- get_and_set callback returns non-hash options
for my $bad ([1], 'string', \'x') {
    my $ok = eval { $c->get_and_set('k', sub { ('new', $bad) }); 1 };
    ok(!$ok, 'get_and_set: non-hash options (' . (ref $bad || 'plain scalar') . ') die');
    like($@, qr/^get_and_set callback options must be a hash reference at /, '... exact message');
    is($c->get('k'), 'reset', '... nothing stored');
    page_free($c, 'k', 'get_and_set bad options');
}

# --- read_cb dies, with and without allow_recursive
for my $rec (0, 1) {
    my $r = FMTest::new_cache(num_pages => 1, allow_recursive => $rec,
        read_cb => sub { die "read_cb died\n" });
    my $ok = eval { $r->get('missing'); 1 };
    ok(!$ok, "read_cb dies (allow_recursive $rec): get dies");
    is($@, "read_cb died\n", '... with the read_cb error');
    page_free($r, 'missing', "read_cb, allow_recursive $rec");

    $ok = eval { $r->get_and_set('missing2', sub { 'x' }); 1 };
    ok(!$ok, "read_cb dies inside get_and_set (allow_recursive $rec)");
    page_free($r, 'missing2', "read_cb in get_and_set, allow_recursive $rec");
    $ok = eval { $r->get_and_remove('missing3'); 1 };
    ok(!$ok, "read_cb dies inside get_and_remove (allow_recursive $rec)");
    page_free($r, 'missing3', "read_cb in get_and_remove, allow_recursive $rec");
}

# --- deserializer dies in get, and in get(skip_unlock) via get_and_set
{
    $die_deser = 1;
    my $ok = eval { $c->get('k'); 1 };
    ok(!$ok, 'deserializer dies: get dies');
    is($@, "deserializer exploded\n", '... with its error');
    $die_deser = 0;
    page_free($c, 'k', 'deserializer in get');

    $die_deser = 1;
    $ok = eval { $c->get_and_set('k', sub { 'never' }); 1 };
    ok(!$ok, 'deserializer dies inside get_and_set (skip_unlock path)');
    $die_deser = 0;
    is($c->get('k'), 'reset', '... nothing stored');
    page_free($c, 'k', 'deserializer in get_and_set');

    $die_deser = 1;
    $ok = eval { $c->get_and_remove('k'); 1 };
    ok(!$ok, 'deserializer dies inside get_and_remove');
    $die_deser = 0;
    page_free($c, 'k', 'deserializer in get_and_remove');
}

# --- serializer dies in set, and in set(_locked) via get_and_set
{
    $die_ser = 1;
    my $ok = eval { $c->set('k', 'new'); 1 };
    ok(!$ok, 'serializer dies: set dies');
    is($@, "serializer exploded\n", '... with its error');
    $die_ser = 0;
    is($c->get('k'), 'reset', '... old value kept');
    page_free($c, 'k', 'serializer in set');

    $ok = eval { $c->get_and_set('k', sub { $die_ser = 1; 'new' }); 1 };
    $die_ser = 0;
    ok(!$ok, 'serializer dies inside get_and_set (set with _locked)');
    is($@, "serializer exploded\n", '... with its error');
    page_free($c, 'k', 'serializer in get_and_set');

    my $r = FMTest::new_cache(num_pages => 1, serializer => \@ser, read_cb => sub { 'from-cb' });
    $die_ser = 1;
    $ok = eval { $r->get('rk'); 1 };
    $die_ser = 0;
    ok(!$ok, 'serializer dies while caching a read_cb value');
    page_free($r, 'rk', 'serializer in read_cb refill');
}

# --- decompressor dies in get
{
    my $d = FMTest::new_cache(num_pages => 1, serializer => '',
        compressor => [ sub { "C$_[0]" }, sub { die "uncompress exploded\n" if $_[0] =~ /bad/; substr($_[0], 1) } ]);
    $d->set('z', 'bad');
    my $ok = eval { $d->get('z'); 1 };
    ok(!$ok, 'decompressor dies: get dies');
    is($@, "uncompress exploded\n", '... with its error');
    page_free($d, 'z', 'decompressor in get');
}

# --- multi_get deserializer, multi_set serializer
{
    $c->multi_set('pg', { a => 1, b => 2 });
    $die_deser = 1;
    my $ok = eval { $c->multi_get('pg', [qw(a b)]); 1 };
    $die_deser = 0;
    ok(!$ok, 'multi_get: a dying deserializer makes it die');
    is($@, "deserializer exploded\n", '... with its error');
    page_free($c, 'k', 'multi_get deserializer');
    is_deeply($c->multi_get('pg', [qw(a b)]), { a => 1, b => 2 }, '... multi_get works again');

    $die_ser = 1;
    $ok = eval { $c->multi_set('pg', { c => 3 }); 1 };
    $die_ser = 0;
    ok(!$ok, 'multi_set: a dying serializer makes it die');
    is($@, "serializer exploded\n", '... with its error');
    page_free($c, 'k', 'multi_set serializer');
    is_deeply($c->multi_get('pg', [qw(a b c)]), { a => 1, b => 2 }, '... nothing written for the failing key');
}

# --- write_cb during an expunge: deserializer dies; error propagates, unlocked
{
    my $wb = FMTest::new_cache(num_pages => 1, page_size => 4096, serializer => \@ser,
        write_action => 'write_back', write_cb => sub { });
    my $i = 0;
    my $ok = eval {
        for (1 .. 200) {
            $i = $_;
            $die_deser = 1 if $i == 30;
            $wb->set("key$_", 'x' x 100);
        }
        1;
    };
    $die_deser = 0;
    ok(!$ok, "a deserializer dying during an expunge write-back propagates (at set $i)");
    page_free($wb, 'key1', 'deserializer during expunge write-back');
}

# ------------------------------------------------------- $@ is preserved
{
    my @wbs;
    my $k = FMTest::new_cache(
        num_pages => 3, page_size => 8192, enable_stats => 1,
        write_action => 'write_back',
        write_cb  => sub { push @wbs, 1; die "wcb\n" },
        delete_cb => sub { die "dcb\n" },
        read_cb   => sub { $_[1] eq 'rcb-undef' ? undef : "rcb-$_[1]" },
    );
    my $r = FMTest::new_cache(num_pages => 1, allow_recursive => 1,
        read_cb => sub { 'rec' }, write_cb => sub { die "wt\n" });

    my @calls = (
        [ 'new'                       => sub { FMTest::new_cache(read_cb => sub { 1 }) } ],
        [ 'set'                       => sub { $k->set('a', 1) } ],
        [ 'set with expiry'           => sub { $k->set('b', { x => 1 }, '10m') } ],
        [ 'set with modseq'           => sub { $k->set('m', 1, { modseq => 3 }) } ],
        [ 'refused set'               => sub { $k->set('m', 1, { modseq => 1 }) } ],
        [ 'set write_through dying write_cb' => sub { $r->set('a', 1) } ],
        [ 'get hit'                   => sub { $k->get('a') } ],
        [ 'get miss via read_cb'      => sub { $k->get('fresh') } ],
        [ 'get read_cb undef'         => sub { $k->get('rcb-undef') } ],
        [ 'get allow_recursive'       => sub { $r->get('nothing') } ],
        [ 'get with modseq option'    => sub { $k->get('m', { modseq => \my $ms }) } ],
        [ 'exists'                    => sub { $k->exists('a') } ],
        [ 'get_and_set'               => sub { $k->get_and_set('c', sub { 5 }) } ],
        [ 'get_and_set empty list'    => sub { $k->get_and_set('c', sub { () }) } ],
        [ 'get_and_remove'            => sub { $k->get_and_remove('c') } ],
        [ 'remove'                    => sub { $k->remove('a') } ],
        [ 'remove absent (delete_cb dies)' => sub { $k->remove('zzz') } ],
        [ 'remove with modseq'        => sub { $k->remove('m', { modseq => 9 }) } ],
        [ 'expire (write_cb dies)'    => sub { $k->expire('b') } ],
        [ 'multi_set'                 => sub { $k->multi_set('p', { a => 1, b => [2] }) } ],
        [ 'multi_get'                 => sub { $k->multi_get('p', [qw(a b c)]) } ],
        [ 'get_keys(0)'               => sub { $k->get_keys(0) } ],
        [ 'get_keys(1)'               => sub { $k->get_keys(1) } ],
        [ 'get_keys(2)'               => sub { $k->get_keys(2) } ],
        [ 'get_statistics'            => sub { $k->get_statistics } ],
        [ 'get_statistics(1)'         => sub { $k->get_statistics(1) } ],
        [ 'purge'                     => sub { $k->purge } ],
        [ 'eviction with write-back'  => sub { $k->set("big$_", 'y' x 900) for 1 .. 40 } ],
        [ 'empty(1)'                  => sub { $k->empty(1) } ],
        [ 'empty'                     => sub { $k->set('d', 1); $k->empty } ],
        [ 'clear'                     => sub { $k->clear } ],
        [ 'parse_expire_time'         => sub { Cache::FastMmap::parse_expire_time('1h') } ],
        [ 'cleanup'                   => sub { FMTest::new_cache(empty_on_exit => 1)->cleanup } ],
        [ 'DESTROY'                   => sub { my $x = FMTest::new_cache(empty_on_exit => 1); undef $x } ],
    );
    for my $call (@calls) {
        my ($name, $code) = @$call;
        $@ = 'sentinel';
        my @res = $code->();
        is($@, 'sentinel', "$name leaves \$\@ untouched");
        is(locked($k), 0, "... no lock left") if $name !~ /^(new|parse|cleanup|DESTROY)/;
    }
    ok(scalar @wbs, 'the dying write_cb did run');
}

# ------------------------------------------------------------ after cleanup
{
    my $x = FMTest::new_cache();
    $x->set('a', 1);
    $x->cleanup;
    for my $m ([ get => 'a' ], [ set => 'a', 1 ], [ exists => 'a' ], [ remove => 'a' ],
               [ get_and_set => 'a', sub { 1 } ], [ get_keys => 0 ], [ clear => () ],
               [ multi_get => 'p', ['a'] ], [ get_statistics => () ], [ empty => () ]) {
        my ($name, @args) = @$m;
        my $ok = eval { $x->$name(@args); 1 };
        ok(!$ok, "$name after cleanup dies");
        like($@, qr/Object not reference/, "... 'Object not reference'");
    }
}

done_testing;
