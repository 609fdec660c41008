#!/usr/bin/env escript
%%! -hidden
%% Bulk-create ejabberd accounts for the benchmark by cloning one account
%% registered the normal way (ejabberdctl register PREFIX0 HOST PASSWORD).
%%
%% ejabberd (auth_password_format: scram) derives SCRAM keys with 4096
%% PBKDF2 iterations in Erlang for each registration: ~17 ms of CPU per
%% account here, ~3 minutes for 10,000 accounts through ejabberdctl or the
%% HTTP API. SCRAM keys depend only on password, salt and iteration count,
%% so the template account's `passwd` record (stored keys, salt, hash,
%% iterations) is copied under each new name with mnesia:dirty_write over
%% Erlang distribution: the same record ejabberd would have written, minus
%% a fresh salt per account. Takes a second or two for 10,000.
%%
%% Run as the ejabberd user (its ~/.erlang.cookie lets us reach the node):
%%   HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
%%       escript ejabberd_clone_users.escript bench-ejabberd@localhost localhost bench 10000
main([NodeS, HostS, Prefix, CountS]) ->
    Node = list_to_atom(NodeS),
    Host = list_to_binary(HostS),
    Count = list_to_integer(CountS),
    Self = list_to_atom("bench_clone_" ++ os:getpid()),
    {ok, _} = net_kernel:start([Self, shortnames]),
    case net_adm:ping(Node) of
        pong -> ok;
        pang -> fail("cannot reach node ~s (cookie? node name?)", [NodeS])
    end,
    Template = list_to_binary(Prefix ++ "0"),
    Rec = case rpc:call(Node, mnesia, dirty_read, [passwd, {Template, Host}]) of
              [R] -> R;
              Other -> fail("template account ~s@~s not found: ~p", [Template, Host, Other])
          end,
    lists:foreach(
      fun(I) ->
              U = list_to_binary(Prefix ++ integer_to_list(I)),
              ok = rpc:call(Node, mnesia, dirty_write, [setelement(2, Rec, {U, Host})])
      end,
      lists:seq(1, Count - 1)),
    N = rpc:call(Node, mnesia, table_info, [passwd, size]),
    io:format("ejabberd: ~p accounts in passwd (cloned ~p from ~s)~n", [N, Count - 1, Template]),
    halt(0);
main(_) ->
    fail("usage: ejabberd_clone_users.escript NODE HOST PREFIX COUNT", []).

fail(Fmt, Args) ->
    io:format(standard_error, Fmt ++ "~n", Args),
    halt(1).
