# Remote variables (ClusterUtils' sow / reap / reaprefs / stitch): globals
# bound and expressions evaluated on other processes by remote calls of the
# two functions below, to every process at once (the calls all go out, then
# the caller waits for each), so that n processes cost about one round trip.

"What `sow` binds and `reap` evaluates: a name or an expression (as ClusterUtils')."
const Doable = Union{Symbol,Expr}

"""
The expression binding `name` to `value` (itself an expression, evaluated
where the binding runs). A slice or key (`bar[1:2, :]`,
`somedict[:buzz][:, :]`) assigns into what is there: a plain indexed
assignment, or, when that refuses one value for many places (Julia 1
wants `.=` there, where ClusterUtils' Julia 0.5 took `=`), a broadcast one.
"""
function binding_expr(name::Doable, @nospecialize(value))
    name isa Expr && name.head === :ref || return Expr(:(=), name, value)
    v = gensym(:value)
    err = gensym(:err)
    body = quote
        try
            $(Expr(:(=), name, v))
        catch $err
            $err isa ArgumentError || rethrow()
            try
                $(Expr(:(.=), name, v))
            catch
                throw($err)
            end
        end
        nothing
    end
    Expr(:let, Expr(:(=), v, value), body)
end

"""
On the target: binds `name` in `mod` to `value`, evaluated here when
`evaluate` (an expression of the caller's), else as it came. Returns
nothing: the value does not travel back.
"""
function sow_here(mod::Module, name::Doable, @nospecialize(value), evaluate::Bool)
    Core.eval(mod, binding_expr(name, evaluate ? value : QuoteNode(value)))
    nothing
end

"Whether `sow` has `value` evaluated where it binds it: code (a name, an expression, a quoted value), as ClusterUtils' put it into the assignment it evaluates there."
evaluated(@nospecialize(value)) = value isa Union{Doable,QuoteNode}

"On the target: `expr` evaluated in Main."
reap_here(expr) = Core.eval(Main, expr)

"""
The remote calls of `f(args...)` on each of `pids`, sent one after the
other without waiting: pid => its Future, or the exception of the send
(a process that has left).
"""
function call_each(@nospecialize(f), pids, @nospecialize(args...))
    calls = Pair{Int,Any}[]
    for p in pids
        r = try
            remotecall(f, Int(p), args...)
        catch err
            err
        end
        push!(calls, Int(p) => r)
    end
    calls
end

"Waits for every call of `calls` (from `call_each`), then throws the first failure (in their order) if any."
function wait_each(calls)
    failure = nothing
    for (p, r) in calls
        if r isa Future
            try
                wait(r)
            catch err
                failure === nothing && (failure = err)
            end
        elseif failure === nothing
            failure = r
        end
    end
    failure === nothing || throw(failure)
    nothing
end

"The values of `calls` (from `call_each`) as pid => value, once every call completed; the first failure is thrown."
function fetch_each(calls)
    wait_each(calls)
    Pair{Int,Any}[p => fetch(r) for (p, r) in calls]
end

pid_list(pids::Integer) = [Int(pids)]
pid_list(pids::AbstractVector{<:Integer}) = Int[p for p in pids]
pid_list(pids) = throw(ArgumentError("expected a process id or a vector of them; got $(repr(pids))"))

"""
    sow(pids, name, value; mod = Main, callstyle = remotecall_wait) -> Dict(pid => Future)
    sow(pid, name, value; ...) -> Future
    sow(name, value; ...)                  # on workers()

Binds the global `name` of module `mod` on each of `pids`, all at once. An
expression `value` is evaluated there (`sow(pids, :x, :(100 + myid()))`
gives 102, 103...), as are a name (its value there) and a `QuoteNode` (the
value quoted: `QuoteNode(:s)` binds the Symbol `:s`); any other value is
shipped as it is.
`name` may be a slice or key expression (`:(bar[1:2, :])`,
`:(somedict[:buzz][:, :])`), which assigns into what is there (one value to
many places broadcasts). Returns once every binding is done (with
`callstyle = remotecall`: at once), with the Future of each (its value is
`nothing`). A failure on any process is thrown once all completed.
"""
function sow(pid::Integer, name::Doable, @nospecialize(value); mod::Module = Main, callstyle = remotecall_wait)
    callstyle(sow_here, Int(pid), mod, name, value, evaluated(value))
end

function sow(pids::AbstractVector{<:Integer}, name::Doable, @nospecialize(value); mod::Module = Main, callstyle = remotecall_wait)
    refs = Dict{Int,Any}()
    if callstyle === remotecall_wait || callstyle === remotecall
        calls = call_each(sow_here, pids, mod, name, value, evaluated(value))
        callstyle === remotecall_wait ? wait_each(calls) : foreach(c -> c[2] isa Exception && throw(c[2]), calls)
        for (p, f) in calls
            refs[p] = f
        end
    else
        @sync for p in pids
            @async refs[Int(p)] = sow(p, name, value; mod = mod, callstyle = callstyle)
        end
    end
    refs
end

sow(name::Doable, @nospecialize(value); mod::Module = Main, callstyle = remotecall_wait) =
    sow(workers(), name, value; mod = mod, callstyle = callstyle)

"""
    reap(pids, expr; returntype = Any, callstyle = remotecall_fetch) -> Dict{Int,returntype}
    reap(pid, expr; ...)
    reap(expr; ...)                        # on workers()

Evaluates `expr` (in Main) on each of `pids` at once and returns `Dict(pid
=> value)`; `reap(pids, :name)` reads a global. A failure on any process
is thrown once all completed.
"""
function reap(pids::AbstractVector{<:Integer}, doable::Doable; callstyle = remotecall_fetch, returntype = Any)
    results = Dict{Int,returntype}()
    if callstyle === remotecall_fetch
        for (p, v) in fetch_each(call_each(reap_here, pids, doable))
            results[p] = v
        end
    else
        @sync for p in pids
            @async results[Int(p)] = callstyle(reap_here, Int(p), doable)
        end
    end
    results
end

reap(pid::Integer, doable::Doable; callstyle = remotecall_fetch, returntype = Any) =
    reap([Int(pid)], doable; callstyle = callstyle, returntype = returntype)

reap(doable::Doable; callstyle = remotecall_fetch, returntype = Any) =
    reap(workers(), doable; callstyle = callstyle, returntype = returntype)

"""
    reaprefs(pids, expr; returntype = Any) -> Dict(pid => Future)

As [`reap`](@ref) without waiting: the Future of each evaluation, whose
value stays there until fetched.
"""
function reaprefs(pids, doable::Doable; returntype = Any)
    refs = Dict{Int,returntype}()
    for (p, r) in call_each(reap_here, pid_list(pids), doable)
        r isa Exception && throw(r)
        refs[p] = r
    end
    refs
end

"""
    stitch(pids, expr, cat = vcat)
    stitch(pid, expr, cat = vcat)
    stitch(expr)                           # on workers(), vcat

`reap(pids, expr)`, then the values concatenated with `cat` in ascending
pid order.
"""
function stitch(pids::AbstractVector{<:Integer}, expr_::Doable, cattype::Function)
    parts = reap(pids, expr_)
    reduce(cattype, [parts[k] for k in sort!(collect(keys(parts)))])
end

stitch(pid::Integer, expr_::Doable, cattype::Function) = stitch([Int(pid)], expr_, cattype)
stitch(pids::AbstractVector{<:Integer}, expr_::Doable) = stitch(pids, expr_, vcat)
stitch(pid::Integer, expr_::Doable) = stitch([Int(pid)], expr_, vcat)
stitch(expr_::Doable) = stitch(workers(), expr_, vcat)
