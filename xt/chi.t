# CHI's own FastMmap driver test class (CHI::t::Driver::FastMmap, shipped
# by Debian's libchi-perl) run against this build, with AUTHOR_TESTING=1 so
# that its multi-process and slow expiry tests run too.  CHI reads
# Cache::FastMmap's object fields and geometry directly and relies on $@
# being left alone by successful calls (SPEC 6).

use strict;
use warnings;

use lib 't/lib';
use FMTest;    # loads OUR Cache::FastMmap first: CHI then uses it
use lib 'xt/lib';
use XTServer;

use Test::More;

# Test::Class collects test methods at CHECK time: load everything in BEGIN.
my $pm;
BEGIN {
    XTServer::time_limit(600);
    # Only look for CHI here: CHI::Test must load Log::Any::Test before CHI.
    XTServer::need('CHI (Debian package libchi-perl)', XTServer::installed('CHI'));
    for my $m (qw(Test::Class Test::Deep Test::Exception Test::Warn)) {
        XTServer::need("$m (needed by CHI's test classes)", XTServer::have_module($m));
    }
    XTServer::need("CHI's driver test classes (CHI::t::Driver::FastMmap)",
        XTServer::installed('CHI::t::Driver::FastMmap'));
    require CHI::t::Driver::FastMmap;
    $pm = $INC{'Cache/FastMmap.pm'};
}

$ENV{AUTHOR_TESTING} = 1;

CHI::t::Driver::FastMmap->runtests;

# What the class ran must have been our build, with the author-only tests.
my $tb = Test::More->builder;
my $fm = CHI->new(driver => 'FastMmap', root_dir => FMTest::tmpdir())->fm_cache;
is(ref($fm), 'Cache::FastMmap', "CHI's FastMmap driver wraps a Cache::FastMmap object");
is($INC{'Cache/FastMmap.pm'}, $pm, 'the one FMTest vetted before CHI was loaded');
my @problems = (FMTest::build_problems(), FMTest::so_problems());
is(scalar(@problems), 0, 'which is still our Rust-core build') or diag(join '; ', @problems);
my @skips = grep { $_->{type} eq 'skip' } $tb->details;
my @author_skips = grep { ($_->{reason} // '') =~ /author/i } @skips;
is(scalar(@author_skips), 0, 'no test was skipped as author-only (AUTHOR_TESTING took effect)')
    or diag(join ', ', map { $_->{name} // '?' } @author_skips);
# CHI's class may also skip for reasons of its own (an optional module of
# CHI missing); CI installs everything, so there no skip at all is allowed.
if ($ENV{FASTMMAP_CI}) {
    is(scalar(@skips), 0, 'FASTMMAP_CI: the driver suite skipped nothing')
        or diag(join ', ', map { ($_->{name} // '?') . ': ' . ($_->{reason} // '') } @skips);
}
my $ran = grep { $_->{type} eq '' && $_->{ok} } $tb->details;
cmp_ok($ran, '>', 100, "the driver suite ran ($ran passing tests)");
