-- Ex-Ray's exray: documents and commands. They load lua/exray only when used;
-- the language server itself starts once require("exray").setup{…} ran.
if vim.g.loaded_exray then
  return
end
vim.g.loaded_exray = true

-- The pattern has a '/' so it matches the whole name (exray:/snapshot/overview),
-- not just its tail.
vim.api.nvim_create_autocmd('BufReadCmd', {
  group = vim.api.nvim_create_augroup('exray_documents', { clear = true }),
  pattern = 'exray:/*',
  callback = function(args) require('exray').read(args.buf) end,
})

local function command(name, fn, opts)
  vim.api.nvim_create_user_command(name, fn, opts or {})
end
command('ExraySnapshot', function() require('exray').snapshot() end, { desc = 'Ex-Ray: snapshot the spec\'s targets' })
command('ExraySnapshots', function() require('exray').snapshots() end, { desc = 'Ex-Ray: pick the current snapshot' })
command('ExrayQuery', function(o) require('exray').query(o.args) end,
  { nargs = '+', desc = 'Ex-Ray: run SQL on the current snapshot' })
command('ExrayFlameGraph', function() require('exray').flame_graph() end, { desc = 'Ex-Ray: open the flame graph' })
command('ExrayOverview', function() require('exray').open('exray:/snapshot/overview') end,
  { desc = 'Ex-Ray: the current snapshot at a glance' })
command('ExrayStacks', function() require('exray').open('exray:/snapshot/stacks') end,
  { desc = 'Ex-Ray: all goroutines grouped by stack' })
