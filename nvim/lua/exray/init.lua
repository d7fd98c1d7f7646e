-- Ex-Ray for Neovim 0.11+ (tested on 0.12): the Ex-Ray language server next
-- to gopls, its exray: documents and its commands. Set-up: README.md, "Neovim".
local M = {}

local NAME = 'exray'
local FALLBACK_CONTENT = 'exray/textDocumentContent' -- for servers/clients without LSP 3.18's request
local MARKERS = { 'go.mod', 'exray.yaml', '.git' }
local group = vim.api.nvim_create_augroup('exray', { clear = true })

local function notify(msg, level)
  vim.notify('Ex-Ray: ' .. msg, level or vim.log.levels.INFO)
end

-- This file is <clone>/nvim/lua/exray/init.lua; the clone's venv runs the server
-- unless setup{cmd=...} says otherwise.
local function default_cmd()
  local here = debug.getinfo(1, 'S').source:sub(2)
  local clone = vim.fs.dirname(vim.fs.dirname(vim.fs.dirname(vim.fs.dirname(here))))
  return { clone .. '/.venv/bin/exray', 'lsp' }
end

local function is_exray(buf)
  return vim.startswith(vim.api.nvim_buf_get_name(buf), 'exray:')
end

-- Start for Go files and for the spec, never for other YAML (the server has
-- nothing to say about it), rooted at the Go module.
local function root_dir(buf, on_dir)
  local name = vim.api.nvim_buf_get_name(buf)
  if vim.bo[buf].filetype == 'yaml' and vim.fs.basename(name) ~= 'exray.yaml' then
    return
  end
  local root = vim.fs.root(buf, MARKERS)
  if root then
    on_dir(root)
  end
end

-- The running client; an exray: document or a command used before any Go
-- file was opened starts one for the project around the working directory.
local function client(buf)
  local c = vim.lsp.get_clients({ name = NAME, bufnr = buf })[1] or vim.lsp.get_clients({ name = NAME })[1]
  if not c then
    local cfg = vim.lsp.config[NAME]
    if not cfg then
      notify('call require("exray").setup() first', vim.log.levels.ERROR)
      return nil
    end
    local cwd = vim.fn.getcwd()
    local id = vim.lsp.start(vim.tbl_extend('force', cfg, { root_dir = vim.fs.root(cwd, MARKERS) or cwd }),
      { attach = false })
    c = id and vim.lsp.get_client_by_id(id)
  end
  -- Requests sent before `initialized` would be refused; wait a bounded while.
  if c and not vim.wait(10000, function() return c.initialized end, 20) then
    notify('the language server did not start', vim.log.levels.ERROR)
    return nil
  end
  return c
end

-- The server announces workspace/textDocumentContent only when the client
-- does (we do, below); otherwise ask its own request.
local function content(c, uri, buf)
  local ws = c.server_capabilities.workspace
  local method = ws and ws.textDocumentContent and 'workspace/textDocumentContent' or FALLBACK_CONTENT
  local res, err = c:request_sync(method, { uri = uri }, 15000, buf)
  if res and res.result and res.result.text then
    return res.result.text
  end
  return ('Ex-Ray: cannot read %s: %s\n'):format(uri, res and res.err and res.err.message or err or 'no answer')
end

--- Run a server command; `done(result)` gets the result unless it failed (the
--- server has then said why with window/showMessage).
local function run(command, args, done)
  local c = client(vim.api.nvim_get_current_buf())
  if not c then
    return
  end
  c:exec_cmd({ title = command, command = command, arguments = args }, { bufnr = vim.api.nvim_get_current_buf() },
    function(err, result)
      if err then
        notify(command .. ': ' .. err.message, vim.log.levels.ERROR)
      elseif done and not (type(result) == 'table' and result.error) then
        done(result)
      end
    end)
end

-- ----------------------------------------------------------- exray: buffers

--- Follow the document link under the cursor: file://…#L<line> to that
--- line, exray: to another virtual document (through BufReadCmd).
function M.follow_link()
  local buf = vim.api.nvim_get_current_buf()
  local c = client(buf)
  if not c then
    return
  end
  local res = c:request_sync('textDocument/documentLink', { textDocument = { uri = vim.uri_from_bufnr(buf) } },
    10000, buf)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local line = vim.api.nvim_get_current_line()
  for _, link in ipairs(res and res.result or {}) do
    local r = link.range
    if r.start.line == row - 1 and link.target then
      local s = vim.str_byteindex(line, c.offset_encoding, r.start.character, false)
      local e = vim.str_byteindex(line, c.offset_encoding, r['end'].character, false)
      if col >= s and col < e then
        local file, lnum = link.target:match('^(file:[^#]*)#L(%d+)$')
        local loc = { uri = file or link.target }
        if lnum then
          local pos = { line = tonumber(lnum) - 1, character = 0 }
          loc.range = { start = pos, ['end'] = pos }
        end
        -- show_document keeps the jump list (<C-o> comes back) and loads
        -- exray: targets through our BufReadCmd.
        vim.lsp.util.show_document(loc, c.offset_encoding, { focus = true })
        return
      end
    end
  end
  notify('no link under the cursor', vim.log.levels.WARN)
end

--- BufReadCmd exray:/*: the buffer's text from the server, read-only.
function M.read(buf)
  local uri = vim.api.nvim_buf_get_name(buf)
  local c = client(buf)
  local text = c and content(c, uri, buf) or ('Ex-Ray: no language server for ' .. uri .. '\n')
  local bo = vim.bo[buf]
  bo.modifiable, bo.readonly = true, false
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split((text:gsub('\n$', '')), '\n', { plain = true }))
  bo.buftype, bo.swapfile, bo.bufhidden = 'nofile', false, 'hide'
  bo.modified, bo.modifiable, bo.readonly = false, false, true
  bo.filetype = 'exray'
  -- Attached, the client can ask textDocument/documentLink for this buffer.
  if c and not vim.lsp.buf_is_attached(buf, c.id) then
    vim.lsp.buf_attach_client(buf, c.id)
  end
  for _, lhs in ipairs({ '<CR>', 'gd' }) do
    vim.keymap.set('n', lhs, M.follow_link, { buffer = buf, desc = 'Ex-Ray: follow the link under the cursor' })
  end
end

-- ------------------------------------------------------------------ commands

function M.snapshot()
  run('exray.snapshot', {}, function(r)
    if r.cancelled then
      return notify('snapshot cancelled')
    end
    notify(('%d goroutines in %d process(es), %.2f s: %s'):format(r.goroutines, r.processes, r.seconds, r.path))
  end)
end

function M.snapshots()
  run('exray.listSnapshots', {}, function(list)
    if #list == 0 then
      return notify('no snapshots yet: :ExraySnapshot takes one')
    end
    vim.ui.select(list, {
      prompt = 'Ex-Ray snapshot',
      format_item = function(s)
        return ('%s %s  %s  %d kB'):format(s.current and '*' or ' ', s.name,
          os.date('%Y-%m-%d %H:%M:%S', math.floor(s.mtime)), math.floor(s.size / 1024))
      end,
    }, function(choice)
      if choice then
        run('exray.useSnapshot', { choice.path }, function(r)
          notify(('%s is current (%d goroutines)'):format(r.path, r.goroutines))
        end)
      end
    end)
  end)
end

function M.query(sql)
  run('exray.runQuery', { sql }) -- the server opens exray:/query/<n> with window/showDocument
end

function M.flame_graph()
  run('exray.openFlameGraph', {}, function(r)
    if not r.shown then
      notify('flame graph written to ' .. r.path)
    end
  end)
end

function M.open(uri)
  run('exray.openDocument', { uri })
end

-- --------------------------------------------------------------------- setup

-- Lenses: 0.12 builds with codelens.enable refresh them on their own; older
-- ones don't announce workspace/codeLens/refresh, so the server can't ask and
-- we refresh them whenever it refreshes the inlay hints (a new snapshot).
local function enable_lenses(buf)
  if vim.lsp.codelens.enable then
    vim.lsp.codelens.enable(true, { bufnr = buf })
    return
  end
  vim.lsp.codelens.refresh({ bufnr = buf })
  vim.api.nvim_create_autocmd({ 'BufEnter', 'InsertLeave', 'BufWritePost' }, {
    group = group, buffer = buf,
    callback = function() vim.lsp.codelens.refresh({ bufnr = buf }) end,
  })
end

-- Hints: Neovim's own handler asks again only for buffers shown in a window;
-- a hidden buffer would keep the old snapshot's hints (until edited) and show
-- them when it comes back. Ask for those too, as for the lenses.
local function on_hint_refresh(err, result, ctx)
  local ret = vim.lsp.handlers['workspace/inlayHint/refresh'](err, result, ctx)
  if err then
    return ret
  end
  local shown = {}
  for _, w in ipairs(vim.api.nvim_list_wins()) do
    shown[vim.api.nvim_win_get_buf(w)] = true
  end
  for _, b in ipairs(vim.lsp.get_buffers_by_client_id(ctx.client_id)) do
    if not is_exray(b) then
      if not vim.lsp.codelens.enable then
        vim.lsp.codelens.refresh({ bufnr = b })
      end
      if not shown[b] and vim.api.nvim_buf_is_loaded(b) and vim.lsp.inlay_hint.is_enabled({ bufnr = b }) then
        vim.lsp.inlay_hint.enable(true, { bufnr = b }) -- drops its hints and asks the server again
      end
    end
  end
  return ret
end

-- LSP 3.18: another snapshot is current, so an exray: buffer we read shows
-- the old one; read it again (later: a request can't be made from a handler).
local function on_content_refresh(_, params)
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(b) and vim.api.nvim_buf_get_name(b) == params.uri then
      vim.schedule(function()
        if vim.api.nvim_buf_is_valid(b) then
          M.read(b)
        end
      end)
    end
  end
  return vim.NIL
end

--- setup{cmd = {…}, settings = {maxHintLength = …, …}} (settings: docs/editor.md).
--- Snapshots through `exray agent`s: settings.agents = { 'host:port', … } with
--- agentTokenFile, or agentCa/agentCert/agentKey (docs/agent.md, "From the editor").
--- settings.executor = 'auto' | 'ptrace' | 'ebpf' chooses who walks the stacks,
--- here and on the agents (default 'auto'); every setting goes to the server as is.
function M.setup(opts)
  opts = opts or {}
  local settings = opts.settings or {}
  vim.lsp.config(NAME, {
    cmd = opts.cmd or default_cmd(),
    filetypes = { 'go', 'yaml' },
    root_dir = root_dir,
    -- The server reads settings at start and again on workspace/configuration.
    init_options = { exray = settings },
    settings = { exray = settings },
    capabilities = { workspace = { textDocumentContent = { dynamicRegistration = false } } },
    handlers = {
      ['workspace/inlayHint/refresh'] = on_hint_refresh,
      ['workspace/textDocumentContent/refresh'] = on_content_refresh,
    },
  })
  vim.lsp.enable(NAME)
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(args)
      local c = vim.lsp.get_client_by_id(args.data.client_id)
      -- Hints and lenses belong to Go files; exray: documents have links.
      if c and c.name == NAME and not is_exray(args.buf) then
        vim.lsp.inlay_hint.enable(true, { bufnr = args.buf })
        enable_lenses(args.buf)
      end
    end,
  })
end

return M
