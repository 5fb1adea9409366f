#!perl
# Proves that this test run exercises the Rust-core build of THIS checkout:
# the .pm from blib/lib (or lib/ with prove -bl), the XS object from
# blib/arch, $IMPLEMENTATION eq 'rust'. Deliberately does not use
# t/lib/FMTest.pm so that each failing condition is reported on its own.
use strict;
use warnings;
use Test::More;
use Cwd ();
use File::Basename ();
use File::Spec ();
use File::Temp ();
use B ();
no warnings "once";

my $root = Cwd::abs_path(File::Spec->catdir(
    File::Basename::dirname(Cwd::abs_path(__FILE__)), File::Spec->updir));

sub under {
    my ($path, $dir) = @_;
    return 0 unless defined $path && -e $path && -d $dir;
    my ($p, $d) = (Cwd::abs_path($path), Cwd::abs_path($dir));
    return index($p, "$d/") == 0;
}

ok(-f "$root/Makefile.PL" || -f "$root/Cargo.toml", "checkout root found at $root");

require_ok('Cache::FastMmap') or BAIL_OUT("cannot load Cache::FastMmap");

is($Cache::FastMmap::IMPLEMENTATION, 'rust', '$Cache::FastMmap::IMPLEMENTATION is rust');
ok(defined $Cache::FastMmap::VERSION && $Cache::FastMmap::VERSION >= 1.63,
   "\$VERSION ($Cache::FastMmap::VERSION) is at least the 1.63 interface level");

my $pm = $INC{'Cache/FastMmap.pm'};
ok(under($pm, "$root/blib/lib") || under($pm, "$root/lib"),
   "Cache/FastMmap.pm comes from this checkout's blib/lib or lib")
    or diag("loaded from $pm");
unlike(Cwd::abs_path($pm), qr{^/usr/}, 'not an installed copy under /usr');

my @so = grep { m{/auto/Cache/FastMmap/FastMmap\.[^/]+\z} } @DynaLoader::dl_shared_objects;
is(scalar(@so), 1, 'exactly one FastMmap shared object loaded')
    or diag("dl_shared_objects: @DynaLoader::dl_shared_objects");
ok(@so && under($so[0], "$root/blib/arch"), 'the FastMmap shared object comes from blib/arch')
    or diag("loaded object: " . ($so[0] // 'none'));
ok(grep({ $_ eq 'Cache::FastMmap' } @DynaLoader::dl_modules), 'Cache::FastMmap registered as a loaded XS module');

# The XS functions of the 1.63 set exist and are real XSUBs from that object.
for my $f (qw(fc_new fc_set_param fc_init fc_close fc_hash fc_lock fc_unlock
              fc_is_locked fc_read fc_write fc_tombstone fc_delete fc_expunge
              fc_get_keys fc_get_page_details fc_reset_page_details
              fc_set_time_override)) {
    my $cv = Cache::FastMmap->can($f);
    ok($cv && B::svref_2object($cv)->XSUB, "$f is an XSUB");
}
ok(Cache::FastMmap->can('exists'), 'exists() method present (1.59+)');

# A cache object built by our layer carries the contract's handle class.
my $dir = File::Temp::tempdir(CLEANUP => 1);
my $c = Cache::FastMmap->new(share_file => "$dir/sf", num_pages => 3, page_size => 8192);
isa_ok($c, 'Cache::FastMmap');
is(ref($c->{Cache}), 'Cache::FastMmap::Handle', 'handle is a Cache::FastMmap::Handle');
ok($c->set('a', 'b'), 'set works');
is($c->get('a'), 'b', 'get works');
undef $c;

if (!Test::More->builder->is_passing) {
    BAIL_OUT("this run does not test our Rust build of $root (see failures above)");
}
done_testing;
