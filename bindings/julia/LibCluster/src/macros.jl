# The Distributed macros: @spawnat, @spawn, @fetch, @fetchfrom, @everywhere,
# and the functions behind them.

const NEXT_IDX = Ref(0)

"The next worker, round-robin over `workers()` (as Distributed's `nextproc`)."
function nextproc()
    ws = workers()
    p = ws[(NEXT_IDX[] % length(ws)) + 1]
    NEXT_IDX[] += 1
    p
end

spawnat(p, thunk) = remotecall(thunk, p)
spawn_somewhere(thunk) = spawnat(nextproc(), thunk)

function spawn_expr(p, expr)
    thunk = esc(:(() -> ($expr)))
    var = esc(Base.sync_varname)
    spawncall = p === QuoteNode(:any) ? :($spawn_somewhere($thunk)) : :($spawnat($(esc(p)), $thunk))
    quote
        local ref = $spawncall
        if $(Expr(:islocal, var))
            put!($var, ref)
        end
        ref
    end
end

"""
    @spawnat p expr

Runs `() -> expr` on process `p` (`:any`: the next worker, round-robin) and
returns a [`Future`](@ref). Inside `@sync`, the block waits for it.
"""
macro spawnat(p, expr)
    spawn_expr(p, expr)
end

"""
    @spawn expr

Same as `@spawnat :any expr`.
"""
macro spawn(expr)
    spawn_expr(QuoteNode(:any), expr)
end

"""
    @fetch expr

`fetch(@spawnat :any expr)`.
"""
macro fetch(expr)
    thunk = esc(:(() -> ($expr)))
    :(remotecall_fetch($thunk, $nextproc()))
end

"""
    @fetchfrom p expr

`remotecall_fetch(() -> expr, p)`.
"""
macro fetchfrom(p, expr)
    thunk = esc(:(() -> ($expr)))
    :(remotecall_fetch($thunk, $(esc(p))))
end

"""
    @everywhere [procs()] expr

Evaluates `expr` at top level in `Main` on every process (or on the given
ones), this one included, and waits for all. `using`/`import` statements
in `expr` run here first. Values can be interpolated with `\$x`. Failures
come back together as a `CompositeException` holding one `RemoteException`
per failed process.
"""
macro everywhere(ex)
    procs = GlobalRef(@__MODULE__, :procs)
    return esc(:($(LibCluster).@everywhere $procs() $ex))
end

macro everywhere(procs, ex)
    imps = extract_imports(ex)
    return quote
        $(isempty(imps) ? nothing : Expr(:toplevel, imps...))  # run imports locally first
        let ex = Expr(:toplevel, :(task_local_storage()[:SOURCE_PATH] = $(get(task_local_storage(), :SOURCE_PATH, nothing))), $(esc(Expr(:quote, ex)))),
            procs = $(esc(procs))
            $remotecall_eval(Main, procs, ex)
        end
    end
end

extract_imports(x) = extract_imports!(Any[], x)
function extract_imports!(imports, ex::Expr)
    if Meta.isexpr(ex, (:import, :using))
        push!(imports, ex)
    elseif Meta.isexpr(ex, :let)
        extract_imports!(imports, ex.args[2])
    elseif Meta.isexpr(ex, (:toplevel, :block))
        for arg in ex.args
            extract_imports!(imports, arg)
        end
    end
    imports
end
extract_imports!(imports, x) = imports

"""
    remotecall_eval(m::Module, procs, expr)

Evaluates `expr` in module `m` on each of `procs` (here too if listed, last)
and waits for all; failures are gathered into one `CompositeException`, one
`RemoteException` per process.
"""
function remotecall_eval(m::Module, procs, ex)
    me = myid()
    futs = Tuple{Int,Any}[]
    run_locally = 0
    for pid in procs
        if pid == me
            run_locally += 1
        else
            f = try
                remotecall(Core.eval, pid, m, ex)
            catch err
                err
            end
            push!(futs, (Int(pid), f))
        end
    end
    errors = Any[]
    for _ in 1:run_locally
        try
            Core.eval(m, ex)
        catch err
            push!(errors, RemoteException(me, capture(err, catch_backtrace())))
        end
    end
    for (pid, f) in futs
        if f isa Future
            try
                wait(f)
            catch err
                push!(errors, err)
            end
        else
            push!(errors, f)
        end
    end
    isempty(errors) || throw(CompositeException(errors))
    nothing
end

"`remotecall_eval(m, pid, expr)` for one process: evaluates there and returns the value."
remotecall_eval(m::Module, pid::Integer, ex) = remotecall_fetch(Core.eval, pid, m, ex)
