# startup.pl - create a Cache::FastMmap in the Apache parent, before it forks.
#
# httpd.conf (prefork MPM, mod_perl 2):
#
#   PerlSetVar            FastMmapShareFile /var/cache/myapp/fastmmap
#   PerlPostConfigRequire /path/to/eg/modperl/startup.pl
#   <Location /count>
#       SetHandler          modperl
#       PerlResponseHandler FastMmapDemo::Handler
#   </Location>
#
# The cache is opened here, at global level in the parent; every child
# inherits the open file and its shared mapping.  Children never empty or
# remove the file: only the process that created the cache does that.
#
# The same file works unchanged under the threaded MPMs (worker, and event,
# Debian's default): mod_perl clones this interpreter for each thread pool,
# and every clone of $FastMmapDemo::Handler::Cache gets a handle of its own on
# the same open file (no re-open by name, so it works after Apache has
# switched to its unprivileged user).  Pages are locked per thread.
# Note that mod_perl starts Perl with an empty %ENV (unless PerlPassEnv),
# hence the explicit share_file.

use strict;
use warnings;

use File::Basename ();
use Apache2::ServerUtil ();
use Cache::FastMmap ();

require(File::Basename::dirname(__FILE__) . '/Handler.pm');

my $share_file = Apache2::ServerUtil->server->dir_config('FastMmapShareFile')
    or die "startup.pl: PerlSetVar FastMmapShareFile is not set\n";

$FastMmapDemo::Handler::Cache = Cache::FastMmap->new(
    share_file => $share_file,
    init_file  => 1,            # start empty at each server start
    cache_size => '4m',
    serializer => '',           # values are plain strings
);

1;
