#!/usr/bin/perl
#
# netserver.pl - a Net::Server::PreFork line server whose children share one
# Cache::FastMmap.  The cache is opened in pre_loop_hook: in the parent,
# after the socket is bound and before the children are forked.
#
#   perl -Mblib eg/netserver.pl --host 127.0.0.1 --port 7007 \
#        --share_file /tmp/netserver.cache
#
# One command per line:  GET key | SET key value | INCR key | QUIT
# Replies:  "VALUE value" or "NONE" | "OK" | the new number | "ERR message"
#
# It is also a module: `require` it and subclass FastMmapDemo::NetServer;
# a method cmd_foo adds the command FOO.

package FastMmapDemo::NetServer;

use strict;
use warnings;

use parent 'Net::Server::PreFork';
use Cache::FastMmap;

# Accept --share_file on the command line (or share_file => ... in run()).
sub options {
    my ($self, $template) = @_;
    $self->SUPER::options($template);
    $template->{share_file} = \$self->{server}{share_file};
}

sub pre_loop_hook {
    my ($self) = @_;
    $self->{cache} = Cache::FastMmap->new(
        share_file => $self->{server}{share_file} || "/tmp/fastmmap-netserver-$$",
        init_file  => 1,       # start empty
        cache_size => '4m',
        serializer => '',      # values are plain strings
    );
}

sub process_request {
    my ($self) = @_;
    while (defined(my $line = <STDIN>)) {
        $line =~ s/\r?\n\z//;
        my ($cmd, $key, $value) = split / /, $line, 3;
        $cmd = lc($cmd // '');
        last if $cmd eq 'quit';
        my $method = $cmd =~ /^\w+\z/ ? $self->can("cmd_$cmd") : undef;
        my $reply = !$method ? "ERR unknown command"
                  : !defined $key ? "ERR missing key"
                  : $self->$method($key, $value);
        print "$reply\r\n";
    }
}

sub cmd_get {
    my ($self, $key) = @_;
    my $v = $self->{cache}->get($key);
    return defined $v ? "VALUE $v" : "NONE";
}

sub cmd_set {
    my ($self, $key, $value) = @_;
    $self->{cache}->set($key, $value // '');
    return "OK";
}

# Atomic: the page stays locked while the sub runs.
sub cmd_incr {
    my ($self, $key) = @_;
    return scalar $self->{cache}->get_and_set($key, sub { ($_[1] // 0) + 1 });
}

__PACKAGE__->run(min_servers => 2, max_servers => 8) unless caller;

1;
