#!/usr/bin/perl
#
# No SV leaks, counted with Test::LeakTrace, on:
#  - the one-call XS fast paths (get hit/miss, set, exists, remove,
#    get_and_set with every kind of callback return, multi_get, multi_set),
#    with raw values, with the Storable serializer and with a custom
#    serializer pair;
#  - the Perl general paths (read_cb/write_cb/delete_cb, write_back,
#    get_keys 0/1/2, expire, get_and_remove, clear/purge/empty,
#    get_statistics, option hashes);
#  - the die paths (callback dying inside get_and_set, serializer and
#    deserializer dying, read_cb/write_cb dying), each inside eval.
#
# Every block leaves the cache in the state it found it in, so the second
# (traced) run of no_leaks_ok does the same work as the warm-up run.

use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

BEGIN {
    if (!eval { require Test::LeakTrace; Test::LeakTrace->import; 1 }) {
        if ($ENV{FASTMMAP_CI}) {
            Test::More::plan(tests => 1);
            Test::More::fail('Test::LeakTrace is required when FASTMMAP_CI is set'
                . ' (apt-get install libtest-leaktrace-perl)');
            exit 1;
        }
        Test::More::plan(skip_all => 'Test::LeakTrace is not installed');
    }
}

sub leak_free {
    my ($name, $code) = @_;
    # the & form skips no_leaks_ok's (&;$) prototype
    &no_leaks_ok($code, $name);
}

# The same for code that must die: the leak check runs it inside eval, and
# the error of the traced run must match $re (so we know the die path ran).
sub leak_free_dies {
    my ($name, $re, $code) = @_;
    my $err = '';
    leak_free($name, sub { $err = eval { $code->(); 1 } ? 'did not die' : "$@" });
    like($err, $re, "$name: died as expected");
}

# ------------------------------------------------------------ fast paths

# A serializer pair of our own that can be made to die on both sides.
my $freeze = sub {
    my ($ref) = @_;
    die "freeze refused\n" if defined $$ref && !ref $$ref && $$ref eq 'FREEZE-DIES';
    return 'S:' . (defined $$ref ? $$ref : '');
};
my $thaw = sub {
    my ($s) = @_;
    die "thaw refused\n" if $s eq 'S:THAW-DIES';
    my $v = substr($s, 2);
    return \$v;
};

my %serializers = (
    raw      => [ serializer => '' ],
    storable => [ serializer => 'storable' ],
    custom   => [ serializer => [ $freeze, $thaw ] ],
);

for my $ser (qw(raw storable custom)) {
    my $c = FMTest::new_cache(@{ $serializers{$ser} }, num_pages => 7, page_size => 16384);
    $c->set("key$_", "value$_") for 1 .. 20;
    $c->set('counter', 0);

    leak_free("$ser: set (new key and overwrite)", sub {
        $c->set('fresh', 'x' x 100);
        $c->set('fresh', 'y' x 50);
        $c->set("key$_", "value$_") for 1 .. 5;
        $c->remove('fresh');
    });
    leak_free("$ser: set with an expire_time argument", sub {
        $c->set('exp', 'v', '10m');
        $c->set('exp', 'v', 3600);
        $c->set('exp', 'v', undef);
    });
    leak_free("$ser: set of undef and of a UTF-8 key/value", sub {
        $c->set('undef', undef);
        $c->set("k\x{263a}", "v\x{263a}");
    });
    leak_free("$ser: get hit (scalar and list context)", sub {
        my $v = $c->get('key1');
        my @v = $c->get('key2');
        my $u = $c->get('undef');
        my $w = $c->get("k\x{263a}");
    });
    leak_free("$ser: get miss", sub {
        my $v = $c->get('no such key');
        my @v = $c->get('no such key either');
    });
    leak_free("$ser: exists hit and miss", sub {
        my $a = $c->exists('key3');
        my $b = $c->exists('nope');
    });
    leak_free("$ser: remove present and absent key", sub {
        $c->set('victim', 'v');
        my $r1 = $c->remove('victim');
        my $r2 = $c->remove('victim');
    });
    leak_free("$ser: get_and_set increment", sub {
        my $n = $c->get_and_set('counter', sub { ($_[1] || 0) + 1 });
        my ($m, $did) = $c->get_and_set('counter', sub { $_[1] - 1 });
    });
    leak_free("$ser: get_and_set on a missing key", sub {
        my $v = $c->get_and_set('gas-new', sub { defined $_[1] ? 'had' : 'new' });
        $c->remove('gas-new');
    });
    leak_free("$ser: get_and_set returning an empty list", sub {
        my $v = $c->get_and_set('key4', sub { return });
        my ($w, $did) = $c->get_and_set('key4', sub { return () });
    });
    leak_free("$ser: get_and_set returning (value, options hash)", sub {
        my $v = $c->get_and_set('key5', sub { ('value5', { expire_time => '1h' }) });
        my ($w, $did) = $c->get_and_set('key5', sub { ('value5', {}) });
        my $x = $c->get_and_set('key5', sub { ('value5', undef) });
    });
    leak_free("$ser: get_and_set reading the info hash", sub {
        my $seen;
        my $v = $c->get_and_set('key6', sub { $seen = join ',', sort keys %{ $_[2] }; $_[1] });
    });
    leak_free_dies("$ser: get_and_set callback dies", qr/^callback died/, sub {
        $c->get_and_set('key7', sub { die "callback died\n" });
    });
    leak_free_dies("$ser: get_and_set callback dies with a reference", qr/^HASH\(/, sub {
        $c->get_and_set('key7', sub { die { code => 42 } });
    });
    leak_free_dies("$ser: get_and_set with bad options dies",
        qr/options must be a hash reference/, sub {
        $c->get_and_set('key8', sub { ('v', 'not a hash') });
    });
    leak_free("$ser: multi_set and multi_get", sub {
        $c->multi_set('pg', { a => 1, b => 'two', c => 'x' x 200 });
        my $h = $c->multi_get('pg', [qw(a b c missing)]);
        $c->multi_set('pg', { a => 1 }, '1h');
        my $e = $c->multi_get('empty-page', []);
    });
    if ($ser eq 'storable') {
        leak_free("$ser: references as values", sub {
            $c->set('ref', { list => [ 1 .. 5 ], name => 'n' });
            my $r = $c->get('ref');
            my $n = $c->get_and_set('ref', sub { $_[1]{list}[0]++; $_[1] });
        });
    }
    if ($ser eq 'custom') {
        $c->set('poison', 'THAW-DIES');
        $c->multi_set('pp', { poison => 'THAW-DIES' });
        leak_free_dies("$ser: serializer dies in set", qr/^freeze refused/, sub {
            $c->set('bad', 'FREEZE-DIES');
        });
        leak_free_dies("$ser: serializer dies in get_and_set's store", qr/^freeze refused/, sub {
            $c->get_and_set('key9', sub { 'FREEZE-DIES' });
        });
        leak_free_dies("$ser: serializer dies in multi_set", qr/^freeze refused/, sub {
            $c->multi_set('pg2', { bad => 'FREEZE-DIES' });
        });
        leak_free_dies("$ser: deserializer dies in get", qr/^thaw refused/, sub {
            my $v = $c->get('poison');
        });
        leak_free_dies("$ser: deserializer dies in get_and_set", qr/^thaw refused/, sub {
            $c->get_and_set('poison', sub { $_[1] });
        });
        leak_free_dies("$ser: deserializer dies in multi_get", qr/^thaw refused/, sub {
            my $h = $c->multi_get('pp', ['poison']);
        });
    }
    # The fast paths must have left no page locked behind.
    ok(!Cache::FastMmap::fc_is_locked($c->{Cache}), "$ser: no page left locked");
}

# ------------------------------------------------------------ general paths

my %store = map { ("db$_" => "dbvalue$_") } 1 .. 10;
our $cb_die = '';
our %cb_died;
my %cb = (
    context   => \%store,
    read_cb   => sub {
        if ($cb_die eq 'read') { $cb_died{read}++; die "read_cb died\n" }
        return $_[0]{ $_[1] };
    },
    write_cb  => sub {
        if ($cb_die eq 'write') { $cb_died{write}++; die "write_cb died\n" }
        $_[0]{ $_[1] } = $_[2];
    },
    delete_cb => sub {
        if ($cb_die eq 'delete') { $cb_died{delete}++; die "delete_cb died\n" }
        delete $_[0]{ $_[1] };
    },
);

for my $ser (qw(raw storable custom)) {
    my $c = FMTest::new_cache(@{ $serializers{$ser} }, %cb, write_action => 'write_back',
        enable_stats => 1, num_pages => 7, page_size => 16384);
    $c->set("key$_", "value$_") for 1 .. 10;
    $c->empty;    # flush the dirty entries into %store once

    leak_free("$ser cb: get through read_cb (miss, then hit)", sub {
        my $v = $c->get('db1');
        my $w = $c->get('db1');
        my $u = $c->get('not in store');
        $c->expire('db1');
    });
    leak_free("$ser cb: get with an options hash", sub {
        my $ms;
        my $v = $c->get('key1', {});
        my $w = $c->get('key1', { modseq => \$ms });
    });
    leak_free("$ser cb: write_back set, then empty flushes via write_cb", sub {
        $c->set('wb', 'dirty value');
        $c->set('wb', 'dirty value', { expire_time => '1h' });
        $c->empty;
    });
    leak_free("$ser cb: remove through delete_cb", sub {
        $c->set('gone', 'v');
        $c->remove('gone');
        delete $store{gone};
    });
    leak_free("$ser cb: exists", sub {
        my $a = $c->exists('key2');
        my $b = $c->exists('nope');
    });
    leak_free("$ser cb: get_and_set (general path)", sub {
        $c->set('ctr', 1);
        my $n = $c->get_and_set('ctr', sub { $_[1] + 1 });
        my ($m, $did) = $c->get_and_set('ctr', sub { return });
        my $o = $c->get_and_set('ctr', sub { ($_[1], { expire_time => 60 }) });
        $c->remove('ctr');
    });
    leak_free("$ser cb: get_and_remove", sub {
        $c->set('gar', 'v');
        my $v = $c->get_and_remove('gar');
        my ($w, $did) = $c->get_and_remove('gar-missing');
        delete $store{gar};
    });
    leak_free("$ser cb: expire", sub {
        $c->set('exp', 'v');
        $c->expire('exp');
        delete $store{exp};
    });
    leak_free("$ser cb: get_keys(0), (1), (2)", sub {
        my @k0 = $c->get_keys(0);
        my @k1 = $c->get_keys(1);
        my @k2 = $c->get_keys(2);
        my $s = $c->get_keys(2);
    });
    leak_free("$ser cb: multi_set and multi_get (general path)", sub {
        $c->multi_set('mp', { a => 1, b => 2 });
        my $h = $c->multi_get('mp', [qw(a b c)]);
        $c->empty;
    });
    leak_free("$ser cb: get_statistics", sub {
        my $s = $c->get_statistics;
        my %s = $c->get_statistics(1);
    });
    leak_free("$ser cb: clear, purge, empty", sub {
        $c->set('tmp', 'v');
        $c->clear;
        $c->purge;
        $c->empty;
        $c->set("key$_", "value$_") for 1 .. 3;
        $c->empty;
    });
    leak_free_dies("$ser cb: read_cb dies inside get", qr/^read_cb died/, sub {
        local $cb_die = 'read';
        my $v = $c->get('db2');
    });
    # write_cb and delete_cb errors are swallowed (upstream semantics); the
    # counters show that the dying callbacks did run.
    %cb_died = ();
    leak_free("$ser cb: write_cb dies while flushing (error swallowed)", sub {
        $c->set('wdie', 'v');
        { local $cb_die = 'write'; $c->empty; }
        $c->set('wdie', 'v');
        $c->empty;
    });
    ok($cb_died{write}, "$ser cb: the dying write_cb ran");
    leak_free("$ser cb: delete_cb dies inside remove (error swallowed)", sub {
        $c->set('ddie', 'v');
        $c->empty;
        { local $cb_die = 'delete'; $c->remove('ddie'); }
    });
    ok($cb_died{delete}, "$ser cb: the dying delete_cb ran");
    leak_free_dies("$ser cb: callback dies inside get_and_set on a cached key",
        qr/^callback died/, sub {
        $c->get_and_set('key3', sub { die "callback died\n" });
    });
    leak_free_dies("$ser cb: callback dies inside get_and_set after read_cb",
        qr/^callback died/, sub {
        $c->get_and_set('db3', sub { die "callback died\n" });
    });
    if ($ser eq 'custom') {
        leak_free_dies("$ser cb: deserializer dies while empty writes back",
            qr/^thaw refused/, sub {
            $c->set('poison', 'THAW-DIES');
            $c->empty;
        });
        $c->set('poison', 'THAW-DIES');
        leak_free_dies("$ser cb: serializer dies in set (general path)",
            qr/^freeze refused/, sub {
            $c->set('bad', 'FREEZE-DIES');
        });
        leak_free_dies("$ser cb: deserializer dies in get (general path)",
            qr/^thaw refused/, sub {
            my $v = $c->get('poison');
        });
        leak_free_dies("$ser cb: serializer dies in get_and_set (general path)",
            qr/^freeze refused/, sub {
            $c->get_and_set('key4', sub { 'FREEZE-DIES' });
        });
        leak_free_dies("$ser cb: deserializer dies in get_keys(2)", qr/^thaw refused/, sub {
            my @k = $c->get_keys(2);
        });
        leak_free_dies("$ser cb: deserializer dies in get_and_set (general path)",
            qr/^thaw refused/, sub {
            $c->get_and_set('poison', sub { $_[1] });
        });
        $c->remove('poison');
    }
    ok(!Cache::FastMmap::fc_is_locked($c->{Cache}), "$ser cb: no page left locked");
    $c->empty;
}

# ------------------------------------------------------------ lifecycle

leak_free('new cache, use it, let it go', sub {
    my $c = FMTest::new_cache(serializer => '', num_pages => 3, page_size => 8192);
    $c->set('a', 'b');
    my $v = $c->get('a');
});

done_testing();
