#!perl
# Entries stored by multi_set live on the page of their page key, not of
# their whole "$page_key-$key" name.  Full validation (test_file at open,
# the check after a lock holder died, the fastmmap command) must count them
# as sound, not drop them as misplaced.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $file = FMTest::share_file();
my %args = (share_file => $file, num_pages => 89, page_size => 8192, serializer => '', unlink_on_exit => 0);
{
    my $c = Cache::FastMmap->new(%args, init_file => 1);
    # page keys with and without '-' in them, so the page key is a prefix
    # up to the first or a later '-'
    $c->multi_set("user$_", { name => "n$_", 'mail-addr' => "m$_" }) for 1 .. 40;
    $c->multi_set("org-$_", { name => "o$_" }) for 1 .. 40;
    $c->set("plain$_", "p$_") for 1 .. 40;
}
my @warnings;
local $SIG{__WARN__} = sub { push @warnings, @_ };
my $c = Cache::FastMmap->new(%args, test_file => 1);
is_deeply(\@warnings, [], 'test_file finds nothing to repair');
my $ok = 0;
for (1 .. 40) {
    my $u = $c->multi_get("user$_", [qw(name mail-addr)]);
    my $o = $c->multi_get("org-$_", ['name']);
    $ok++ if ($u->{name} // '') eq "n$_" && ($u->{'mail-addr'} // '') eq "m$_"
        && ($o->{name} // '') eq "o$_" && ($c->get("plain$_") // '') eq "p$_";
}
is($ok, 40, 'every multi_set and set entry is still there');
is(scalar(my @k = $c->get_keys(0)), 40 * 4, 'get_keys lists all of them');
undef $c;
unlink $file;
done_testing();
